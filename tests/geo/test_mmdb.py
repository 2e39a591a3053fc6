"""The MaxMind DB writer, read back with maxminddb; range extraction; the GeoIP loader."""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import maxminddb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from maxminddb.decoder import Decoder

from trio_tproxy.geo.build import build_country_mmdb, range_to_cidrs
from trio_tproxy.geo.geoip import (
    PRIVATE_NETWORKS,
    CountryDB,
    GeoipError,
    pack_ranges,
    private_ranges,
    unpack_ranges,
    unpack_tree,
)  # fmt: skip
from trio_tproxy.geo.mmdb_writer import Uint, encode_data, pack_tree, write_mmdb

MODES = [maxminddb.MODE_AUTO, maxminddb.MODE_FILE, maxminddb.MODE_MEMORY]


def v4(cidr: str) -> tuple[int, int]:
    net = ipaddress.IPv4Network(cidr)
    return int(net.network_address), net.prefixlen + 96


def v6(cidr: str) -> tuple[int, int]:
    net = ipaddress.IPv6Network(cidr)
    return int(net.network_address), net.prefixlen


def write(tmp_path: Path, networks: list[tuple[str, int]], records: Sequence[object]) -> Path:
    rows = sorted(((*(v4 if "." in c else v6)(c), i) for c, i in networks))
    body, _ = write_mmdb(rows, records, database_type="Test-Country", description="test")
    path = tmp_path / "t.mmdb"
    path.write_bytes(body)
    return path


@pytest.mark.parametrize(
    "value",
    [
        "", "CN", "é" * 40, "x" * 300, "y" * 70000, b"\x00\xff", True, False, 0, 1, 65535,
        65536, 2**32 - 1, 2**32, 2**64 - 1, 1.5, [], [1, "a", [2]],
        {"country": {"iso_code": "CN", "names": {"en": "China"}}}, {"k" * 29: 1},
    ],
)  # fmt: skip
def test_encode_data_round_trips_through_maxminddb_decoder(value: object) -> None:
    encoded = encode_data(value)
    decoded, end = Decoder(encoded).decode(0)
    assert decoded == value
    assert end == len(encoded)


def test_fixed_width_unsigned() -> None:
    # extended type: control byte (type 0, size 1), then type 9 - 7, then the payload
    assert encode_data(Uint(5, 64)) == bytes([0x01, 9 - 7, 5])
    assert Decoder(encode_data(Uint(2**40, 64))).decode(0)[0] == 2**40


@pytest.mark.parametrize("mode", MODES)
def test_database_round_trip(tmp_path: Path, mode: int) -> None:
    records = [{"country": {"iso_code": cc}} for cc in ("CN", "US", "DE")]
    path = write(
        tmp_path,
        [("1.0.1.0/24", 0), ("8.8.8.0/24", 1), ("0.0.0.0/8", 2), ("2400:3200::/32", 0),
         ("2001:4860::/32", 1), ("255.255.255.255/32", 2)],
        records,
    )  # fmt: skip
    with maxminddb.open_database(str(path), mode) as reader:
        meta = reader.metadata()
        assert (meta.ip_version, meta.record_size, meta.database_type) == (6, 24, "Test-Country")
        expect = {
            "1.0.1.0": "CN", "1.0.1.255": "CN", "1.0.0.255": None, "1.0.2.0": None,
            "8.8.8.8": "US", "0.1.2.3": "DE", "255.255.255.255": "DE", "255.255.255.254": None,
            "2400:3200::1": "CN", "2400:3201::": None, "2001:4860:4860::8888": "US",
            "::ffff:8.8.8.8": "US", "::8.8.8.8": "US", "2001:db8::1": None,
        }  # fmt: skip
        for ip, cc in expect.items():
            got: Any = reader.get(ip)
            assert (got and got["country"]["iso_code"]) == cc or got is cc, ip
        assert reader.get_with_prefix_len("1.0.1.7")[1] == 24


def test_empty_database_is_valid(tmp_path: Path) -> None:
    path = write(tmp_path, [], [])
    with maxminddb.open_database(str(path)) as reader:
        assert reader.get("1.2.3.4") is None


@pytest.mark.parametrize("size", [24, 28, 32])
def test_tree_packing_round_trips_for_every_record_size(size: int) -> None:
    rnd = random.Random(size)
    top = 1 << size
    left = [rnd.randrange(top) for _ in range(500)] + [top - 1, 0]
    right = [rnd.randrange(top) for _ in range(500)] + [0, top - 1]
    packed = pack_tree(left, right, size)
    assert len(packed) == len(left) * size // 4
    got_left, got_right = unpack_tree(packed, len(left), size)
    assert list(got_left) == left and list(got_right) == right


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 2**12)), max_size=30))
def test_range_to_cidrs_covers_exactly(pairs: list[tuple[int, int]]) -> None:
    for low, extra in pairs:
        high = min(low + extra, 2**32 - 1)
        blocks = list(range_to_cidrs(low, high, 32))
        at = low
        for start, prefix in blocks:
            assert start == at and start % (1 << (32 - prefix)) == 0
            at = start + (1 << (32 - prefix))
        assert at == high + 1
        # minimal: no two neighbours could be one block
        nets = [ipaddress.IPv4Network((s, p)) for s, p in blocks]
        assert list(ipaddress.collapse_addresses(nets)) == nets


def test_private_ranges_are_the_reference_list() -> None:
    assert PRIVATE_NETWORKS == (
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
        "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
        "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "255.255.255.255/32", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8",
    )  # fmt: skip
    ipv4, ipv6 = private_ranges()
    assert ipv4[0] == (0, 0x00FFFFFF) and ipv4[-1] == (0xE0000000, 0xFFFFFFFF)  # merged tail
    assert len(ipv6) == 4


def test_packed_ranges() -> None:
    ranges = [(1, 2), (10, 2**32 - 1)]
    assert [r for blob in pack_ranges(ranges, 4) for r in unpack_ranges(blob, 4)] == ranges
    big = [(i * 4, i * 4 + 1) for i in range(40000)]
    blobs = pack_ranges(big, 16)
    assert len(blobs) == 3
    assert [r for blob in blobs for r in unpack_ranges(blob, 16)] == big


@pytest.fixture
def country_db(tmp_path: Path) -> Path:
    source = tmp_path / "c.csv"
    source.write_text(
        "# cidr,cc\n1.0.1.0/24,CN\n1.0.2.0/23,cn\n8.8.8.0/24,US\n2400:3200::/32,CN\n"
        "2001:4860::/32,US\n10.0.0.0/8,??\n"
    )
    build_country_mmdb([source], tmp_path / "c.mmdb")
    return tmp_path / "c.mmdb"


def test_country_db_lookup_and_extract(country_db: Path) -> None:
    db = CountryDB(country_db)
    assert db.lookup("1.0.2.200") == "CN"
    assert db.lookup("::ffff:8.8.8.8") == "US"
    assert db.lookup("10.1.1.1") is None
    assert db.lookup("not an ip") is None
    assert db.countries() == {"CN", "US"}
    cn = db.extract({"CN"})["CN"]
    assert cn == ([(0x01000100, 0x010003FF)], [(0x24003200 << 96, ((0x24003201) << 96) - 1)])


def test_extraction_without_the_index_walks_the_tree(country_db: Path) -> None:
    indexed = CountryDB(country_db).extract({"CN", "US", "DE"})
    db = CountryDB(country_db)
    db.record_codes()
    db._index = None  # a database from elsewhere (GeoLite2, DB-IP) has no index
    assert db.extract({"CN", "US", "DE"}) == indexed
    assert indexed["DE"] == ([], [])


def test_registered_country_fallback(tmp_path: Path) -> None:
    path = write(tmp_path, [("5.0.0.0/8", 0)], [{"registered_country": {"iso_code": "eu"}}])
    db = CountryDB(path)
    assert db.lookup("5.1.2.3") == "EU"
    assert db.extract({"EU"})["EU"][0] == [(5 << 24, (6 << 24) - 1)]


def test_not_a_database(tmp_path: Path) -> None:
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"garbage" * 100)
    with pytest.raises(GeoipError, match="cannot open MaxMind DB"):
        CountryDB(bad)
    with pytest.raises(GeoipError):
        CountryDB(tmp_path / "missing.mmdb")
