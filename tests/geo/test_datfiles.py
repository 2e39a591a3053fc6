"""GeoData over .dat files: lazy loading, the asset directory, list names, fast ranges."""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tproxy.geo import GeoData, GeoipError, GeositeError, ip_list_key, ip_list_name
from trio_tproxy.geo.dat import (
    DatDomain,
    DatError,
    IPNetwork,
    encode_geoip_dat,
    encode_geosite_dat,
    geoip_entry,
    geoip_entry_ranges,
    index_dat,
)
from trio_tproxy.geo.geoip import merge_ranges, private_ranges

NOWHERE = Path("/nonexistent")
NONE: frozenset[str] = frozenset()


def ld(number: int, payload: bytes) -> bytes:
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def test_lists_come_from_the_dat_and_each_file_is_read_once(tmp_path: Path) -> None:
    sites = tmp_path / "geosite.dat"
    sites.write_bytes(
        encode_geosite_dat(
            {
                "CN": [DatDomain("domain", "Baidu.COM", frozenset({"CN"}))],
                "ADS": [DatDomain("regexp", r"^ad\d+\.", NONE)],
            }
        )
    )
    geo = GeoData(NOWHERE, NOWHERE, geosite_dat=sites)
    (rule,) = geo.geosite("cn")
    assert (rule.kind, rule.value, rule.attrs) == ("domain", "baidu.com", frozenset({"cn"}))
    assert rule.location == f"list CN of {sites}"
    sites.unlink()  # loaded already: another list of it needs no second read
    assert [r.value for r in geo.geosite("Ads")] == [r"^ad\d+\."]
    with pytest.raises(GeositeError, match="no list 'NOSUCH' in this geosite file"):
        geo.geosite("nosuch")


def test_bad_values_in_a_list_name_the_file(tmp_path: Path) -> None:
    sites = tmp_path / "geosite.dat"
    sites.write_bytes(
        encode_geosite_dat(
            {"RE": [DatDomain("regexp", "(", NONE)], "EMPTY": [DatDomain("full", "", NONE)]}
        )
    )
    geo = GeoData(NOWHERE, NOWHERE, geosite_dat=sites)
    with pytest.raises(GeositeError, match=rf"^{sites}: list RE: bad regexp '\('"):
        geo.geosite("re")
    with pytest.raises(GeositeError, match=rf"^{sites}: list EMPTY: empty full value"):
        geo.geosite("empty")


def test_private_from_the_dat_or_built_in(tmp_path: Path) -> None:
    with_private = tmp_path / "a.dat"
    with_private.write_bytes(encode_geoip_dat({"PRIVATE": [ipaddress.ip_network("10.0.0.0/8")]}))
    geo = GeoData(NOWHERE, NOWHERE, geoip_dat=with_private)
    assert geo.country_ranges("private") == ([(0x0A000000, 0x0AFFFFFF)], [])
    assert geo.ip_origin("private") == f"list PRIVATE of {with_private}"
    without = tmp_path / "b.dat"
    without.write_bytes(encode_geoip_dat({"CN": []}))
    geo = GeoData(NOWHERE, NOWHERE, geoip_dat=without)
    assert geo.country_ranges("PRIVATE") == private_ranges()
    assert geo.ip_origin("private") is None
    assert geo.country_ranges("cn") == ([], [])
    with pytest.raises(GeoipError, match=f"^{without}: no list 'US' in this geoip file$"):
        geo.country_ranges("us")
    missing = GeoData(NOWHERE, NOWHERE, geoip_dat=tmp_path / "none.dat")
    with pytest.raises(GeoipError, match=r"none\.dat: no such file"):
        missing.country_ranges("private")  # configured, so its absence is an error


def test_the_asset_directory(tmp_path: Path) -> None:
    a, b = tmp_path / "a" / "geosite.dat", tmp_path / "b" / "geoip.dat"
    both = GeoData(NOWHERE, NOWHERE, geosite_dat=a, geoip_dat=b)
    assert both.asset_path("x.dat", domains=True) == tmp_path / "a" / "x.dat"
    assert both.asset_path("x.dat", domains=False) == tmp_path / "b" / "x.dat"
    assert both.asset_path("/abs/x.dat", domains=True) == Path("/abs/x.dat")
    only_sites = GeoData(NOWHERE, NOWHERE, geosite_dat=a)
    assert only_sites.asset_path("x.dat", domains=False) == tmp_path / "a" / "x.dat"
    neither = GeoData(NOWHERE, NOWHERE, base_dir=tmp_path)
    assert neither.asset_path("x.dat", domains=True) == tmp_path / "x.dat"


@pytest.mark.parametrize(
    ("entry", "name", "key"),
    [
        ("geoip:cn", ("cn", False), "CN"),
        ("GeoIP:!Private", ("Private", True), "PRIVATE"),
        ("geoip:telegram", ("telegram", False), "TELEGRAM"),
        ("ext:my.dat:lan", ("ext:my.dat:lan", False), "ext:my.dat:LAN"),
        ("ext-ip:/a:b/My.dat:!lan", ("ext:/a:b/My.dat:lan", True), "ext:/a:b/My.dat:LAN"),
        ("10.0.0.0/8", None, None),
    ],
)
def test_ip_list_names(entry: str, name: tuple[str, bool] | None, key: str | None) -> None:
    assert ip_list_name(entry) == name
    if name is not None:
        assert ip_list_key(name[0]) == key


def test_ranges_match_the_networks_in_every_layout() -> None:
    nets = ["1.2.3.0/24", "0.0.0.0/0", "10.0.0.1/32", "2001:db8::/32", "::/0", "fe80::1/128"]
    table = {"X": [ipaddress.ip_network(n) for n in nets]}
    data = encode_geoip_dat(table)
    # a 16-byte address then 0x10 0x80: a truncated varint, not prefix 128
    bad = ld(1, ld(1, b"V") + ld(2, ld(1, bytes(16)) + bytes([0x10, 0x80])))
    with pytest.raises(DatError, match="truncated varint"):
        geoip_entry_ranges(bad, index_dat(bad, "b.dat")["V"], "b.dat")
    # Go's protobuf writer omits a zero prefix and may order fields differently
    go_style = ld(1, ld(1, b"Y") + ld(2, bytes([0x10, 8]) + ld(1, bytes([10, 0, 0, 0]))))
    go_style += ld(1, ld(1, b"Z") + ld(2, ld(1, bytes(4))) + bytes([0x18, 1]))
    for blob in (data, go_style):
        for code, span in index_dat(blob, "t.dat").items():
            v4, v6, reverse = geoip_entry_ranges(blob, span, "t.dat")
            expected, flag = geoip_entry(blob, span, "t.dat")
            assert reverse == flag, code
            assert merge_ranges(v4 + v6) == merge_ranges(
                [(int(n.network_address), int(n.broadcast_address)) for n in expected]
            )


def test_reverse_match_lists_are_complemented(tmp_path: Path) -> None:
    path = tmp_path / "geoip.dat"
    entry = ld(1, b"NOTLAN") + ld(2, ld(1, bytes([128, 0, 0, 0])) + bytes([0x10, 1]))
    path.write_bytes(ld(1, entry + bytes([0x18, 1])))
    geo = GeoData(NOWHERE, NOWHERE, geoip_dat=path)
    assert geo.country_ranges("notlan") == ([(0, 0x7FFFFFFF)], [(0, (1 << 128) - 1)])


@settings(max_examples=300)
@given(st.binary(max_size=120))
def test_garbage_raises_only_dat_error(data: bytes) -> None:
    with contextlib.suppress(DatError):
        for span in index_dat(data, "g.dat").values():
            geoip_entry_ranges(data, span, "g.dat")


@settings(max_examples=200)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.integers(0, (1 << 32) - 1), st.integers(0, 32), st.just(4)),
            st.tuples(st.integers(0, (1 << 128) - 1), st.integers(0, 128), st.just(6)),
        ),
        max_size=20,
    )
)
def test_fast_ranges_equal_the_networks(cidrs: list[tuple[int, int, int]]) -> None:
    nets: list[IPNetwork] = [
        ipaddress.IPv4Network((ip, prefix), strict=False)
        if v == 4
        else ipaddress.IPv6Network((ip, prefix), strict=False)
        for ip, prefix, v in cidrs
    ]
    data = encode_geoip_dat({"X": nets})
    v4, v6, reverse = geoip_entry_ranges(data, index_dat(data, "h.dat")["X"], "h.dat")
    assert not reverse
    spans = [(n.version, int(n.network_address), int(n.broadcast_address)) for n in nets]
    assert v4 == [(lo, hi) for v, lo, hi in spans if v == 4]
    assert v6 == [(lo, hi) for v, lo, hi in spans if v == 6]
