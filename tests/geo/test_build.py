"""``geodata build``: Tor geoip/geoip6 files and CSV -> a country MaxMind DB."""

from __future__ import annotations

import ipaddress
import time
from pathlib import Path
from typing import Any

import maxminddb
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_tproxy.geo import GeodataBuildError, build_country_mmdb
from trio_tproxy.geo.build import _fast_ipv6
from trio_tproxy.geo.geoip import CountryDB

TOR_GEOIP = Path("/usr/share/tor/geoip")
TOR_GEOIP6 = Path("/usr/share/tor/geoip6")

# Lines as in Debian's tor-geoipdb (IPv4 as integers, IPv6 as addresses).
GEOIP = """\
# This file has been converted from the IPFire Location database
#
16777216,16777471,AU
16777472,16778239,CN
16778240,16779263,AU
16779264,16781311,CN
16781312,16785407,JP
167772160,184549375,??
"""
GEOIP6 = """\
# comment
2001::,2001:0:ffff:ffff:ffff:ffff:ffff:ffff,??
2001:4:112::,2001:4:112:ffff:ffff:ffff:ffff:ffff,US
2400:3200::,2400:3200:ffff:ffff:ffff:ffff:ffff:ffff,CN
"""


def country(reader: maxminddb.Reader, ip: str) -> str | None:
    record: Any = reader.get(ip)
    return None if record is None else str(record["country"]["iso_code"])


def test_build_from_tor_format(tmp_path: Path) -> None:
    (tmp_path / "geoip").write_text(GEOIP)
    (tmp_path / "geoip6").write_text(GEOIP6)
    (tmp_path / "extra.csv").write_text("203.0.113.0/24,ZZ\n")
    out = tmp_path / "out" / "country.mmdb"
    stats = build_country_mmdb(
        [tmp_path / "geoip", tmp_path / "geoip6", tmp_path / "extra.csv"], out
    )
    assert (stats.countries, stats.ipv4_ranges, stats.ipv6_ranges) == (5, 6, 2)
    assert "5 countries" in str(stats)
    with maxminddb.open_database(str(out)) as reader:
        assert country(reader, "1.0.0.0") == "AU"
        assert country(reader, "1.0.0.255") == "AU"
        assert country(reader, "1.0.1.0") == "CN"
        assert country(reader, "1.0.3.255") == "CN"
        assert country(reader, "1.0.4.0") == "AU"
        assert country(reader, "1.0.16.0") == "JP"
        assert country(reader, "1.0.32.0") is None
        assert country(reader, "10.1.2.3") is None  # "??" is skipped
        assert country(reader, "2001:4:112::1") == "US"
        assert country(reader, "2400:3200:1::") == "CN"
        assert country(reader, "203.0.113.9") == "ZZ"
    assert not (tmp_path / "out" / "country.mmdb.tmp").exists()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1.2.3.0/24", "expected LOW,HIGH,CC or CIDR,CC"),
        ("1,2", "bad country code"),
        ("1,2,3,4", "expected LOW,HIGH,CC or CIDR,CC"),
        ("5,1,CN", "ends before it starts"),
        ("1,2,CHN", "bad country code"),
        ("4294967296,4294967297,CN", "out of range"),
        ("\u00b9,2,CN", "does not appear to be"),  # "¹".isdigit(), but not a number
        ("1.2.3.4,::1,CN", "mixes IPv4 and IPv6"),
        ("10.0.0.1/8,CN", "has host bits set"),
        ("nonsense,CN", "does not appear to be"),
        ("2001:::1,2001::2,US", "does not appear to be"),
    ],
)
def test_bad_lines(tmp_path: Path, line: str, message: str) -> None:
    source = tmp_path / "src.csv"
    source.write_text(f"# header\n8.8.8.0/24,US\n{line}\n")
    with pytest.raises(GeodataBuildError) as info:
        build_country_mmdb([source], tmp_path / "out.mmdb")
    (problem,) = info.value.problems
    assert problem.startswith(f"{source}:3: ")
    assert message in problem
    assert not (tmp_path / "out.mmdb").exists()


def test_overlaps_and_missing_files(tmp_path: Path) -> None:
    source = tmp_path / "a.csv"
    source.write_text("1.0.0.0/24,AU\n1.0.0.128/25,CN\n1.0.0.0/25,AU\n")
    with pytest.raises(GeodataBuildError) as info:
        build_country_mmdb([source, tmp_path / "missing"], tmp_path / "out.mmdb")
    problems = info.value.problems
    assert any("missing: cannot read" in p for p in problems)
    assert any(p.startswith(f"{source}:2: overlaps {source}:1 (AU)") for p in problems)


def test_many_bad_lines_are_capped(tmp_path: Path) -> None:
    source = tmp_path / "a.csv"
    source.write_text("x\n" * 500)
    with pytest.raises(GeodataBuildError) as info:
        build_country_mmdb([source], tmp_path / "out.mmdb")
    assert len(info.value.problems) == 51
    assert info.value.problems[-1] == "... and 450 more"


@pytest.mark.slow
@pytest.mark.skipif(not TOR_GEOIP.exists(), reason="tor-geoipdb is not installed")
def test_build_from_the_real_tor_files(tmp_path: Path) -> None:
    out = tmp_path / "country.mmdb"
    began = time.process_time()  # CPU time: CI machines are shared
    stats = build_country_mmdb([TOR_GEOIP, TOR_GEOIP6], out)
    assert time.process_time() - began < 30
    assert stats.countries > 200 and stats.ipv4_ranges > 100_000
    # Every 997th IPv4 range: the database answers what the file says, at both ends.
    lines = [ln for ln in TOR_GEOIP.read_text().splitlines() if ln and ln[0].isdigit()]
    with maxminddb.open_database(str(out)) as reader:
        for line in lines[::997]:
            low, high, cc = line.split(",")
            for value in (int(low), int(high)):
                ip = ".".join(str((value >> s) & 255) for s in (24, 16, 8, 0))
                assert country(reader, ip) == (None if cc == "??" else cc), line
    db = CountryDB(out)
    v4, v6 = db.extract({"CN"})["CN"]
    assert len(v4) > 1000 and len(v6) > 1000
    assert db.lookup("114.114.114.114") == "CN"


@given(st.integers(0, 2**128 - 1), st.integers(0, 128), st.sampled_from(["short", "long", "up"]))
def test_fast_ipv6_parser_agrees_with_ipaddress(value: int, zeros: int, form: str) -> None:
    address = ipaddress.IPv6Address(value & ~((1 << zeros) - 1))
    text = {"short": str(address), "long": address.exploded, "up": str(address).upper()}[form]
    assert _fast_ipv6(text) in (None, int(address))


@pytest.mark.parametrize(
    "text", ["1:::2", "12345::", "1::2::3", ":1::", "1:", "g::", "1:2:3:4:5:6:7:8:9"]
)
def test_fast_ipv6_parser_leaves_bad_text_to_ipaddress(text: str) -> None:
    assert _fast_ipv6(text) is None
