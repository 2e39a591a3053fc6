"""geosite.dat / geoip.dat: the hand-written protobuf reader and writer."""

from __future__ import annotations

import contextlib
import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tproxy.geo.dat import (
    DatDomain,
    DatError,
    dat_domains,
    encode_geoip_dat,
    encode_geosite_dat,
    read_geoip_dat,
    read_geosite_dat,
)
from trio_tproxy.geo.dlc import valid_list_name
from trio_tproxy.geo.geosite import GeositeLoader

RULES = Path(__file__).resolve().parents[2] / "rules"
NONE: frozenset[str] = frozenset()

SITES = {
    "CN": [
        DatDomain("domain", "example.cn", frozenset({"ads"})),
        DatDomain("full", "www.example.com", NONE),
        DatDomain("keyword", "baidu", NONE),
        DatDomain("regexp", r"^a\d+\.b$", frozenset({"cn", "!cn"})),
    ],
    "GOOGLE": [DatDomain("domain", "google.com", NONE)],
}
IPS = {
    "CN": [ipaddress.ip_network("1.0.1.0/24"), ipaddress.ip_network("2001:250::/35")],
    "PRIVATE": [ipaddress.ip_network("10.0.0.0/8")],
}


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def ld(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_geosite_round_trip() -> None:
    table = read_geosite_dat(encode_geosite_dat(SITES))
    assert table == SITES
    assert table.lookup("google") == SITES["GOOGLE"]
    assert table.lookup("Cn") == SITES["CN"]
    assert table.lookup("nosuch") is None


def test_geoip_round_trip() -> None:
    table = read_geoip_dat(encode_geoip_dat(IPS))
    assert table == IPS
    assert table.lookup("private") == IPS["PRIVATE"]


def test_codes_are_upper_cased_and_first_entry_wins() -> None:
    data = encode_geosite_dat({"cn": [DatDomain("domain", "a.cn", NONE)]})
    data += encode_geosite_dat({"CN": [DatDomain("domain", "b.cn", NONE)]})
    assert read_geosite_dat(data) == {"CN": [DatDomain("domain", "a.cn", NONE)]}


def test_unknown_fields_are_skipped() -> None:
    junk = (
        varint(9 << 3 | 0) + varint(300)  # varint
        + varint(10 << 3 | 1) + b"\x00" * 8  # fixed64
        + ld(11, b"whatever")  # length-delimited
        + varint(12 << 3 | 5) + b"\x00" * 4  # fixed32
    )  # fmt: skip
    attr = ld(1, b"ads") + varint(3 << 3) + varint(7) + junk  # int_value, then junk
    domain = varint(1 << 3) + varint(3) + ld(2, b"a.example") + ld(3, attr) + junk
    entry = ld(1, b"XX") + junk + ld(2, domain)
    data = junk + ld(1, entry) + junk
    assert read_geosite_dat(data) == {"XX": [DatDomain("full", "a.example", frozenset({"ads"}))]}
    cidr = ld(1, bytes([192, 168, 0, 0])) + junk + varint(2 << 3) + varint(16)
    ip_entry = ld(1, b"LAN") + ld(2, cidr) + junk
    assert read_geoip_dat(junk + ld(1, ip_entry)) == {
        "LAN": [ipaddress.ip_network("192.168.0.0/16")]
    }


def test_reverse_match_is_the_complement() -> None:
    entry = ld(1, b"NOTLAN") + ld(2, ld(1, bytes(4)) + varint(2 << 3) + varint(1))
    entry += varint(3 << 3) + varint(1)
    nets = read_geoip_dat(ld(1, entry))["NOTLAN"]
    assert nets == [ipaddress.ip_network("128.0.0.0/1"), ipaddress.ip_network("::/0")]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (ld(1, ld(2, varint(1 << 3) + varint(9))), "unknown domain type 9"),
        (varint(1 << 3 | 3), "bad wire type 3"),
        (varint(1 << 3 | 0) + varint(1), "entry: wire type 0"),
        (b"\xff" * 11, "varint longer than 10 bytes"),
        (ld(1, ld(1, b"\xff")), "not UTF-8"),
        (b"\x00", "field number 0"),
    ],
)
def test_bad_geosite(data: bytes, message: str) -> None:
    with pytest.raises(DatError, match=message) as info:
        read_geosite_dat(data, "x.dat")
    assert info.value.path == "x.dat"


@pytest.mark.parametrize(
    ("cidr", "message"),
    [(ld(1, bytes(5)), "5 bytes"), (ld(1, bytes(4)) + varint(2 << 3) + varint(33), "prefix 33")],
)
def test_bad_geoip(cidr: bytes, message: str) -> None:
    with pytest.raises(DatError, match=message):
        read_geoip_dat(ld(1, ld(2, cidr)))


def test_every_truncation_raises_dat_error() -> None:
    sites = encode_geosite_dat(SITES)
    ips = encode_geoip_dat(IPS)
    for data, read in ((sites, read_geosite_dat), (ips, read_geoip_dat)):
        for cut in range(1, len(data)):
            try:
                result = read(data[:cut])
            except DatError:
                continue
            # a cut that falls between top-level entries is a well-formed, shorter list
            assert len(result) < len(SITES if data is sites else IPS), cut


@settings(max_examples=500)
@given(st.binary(max_size=200))
def test_garbage_raises_only_dat_error(data: bytes) -> None:
    for read in (read_geosite_dat, read_geoip_dat):
        with contextlib.suppress(DatError):
            read(data)


@settings(max_examples=300)
@given(st.lists(st.integers(0, 255), max_size=60))
def test_mutated_file_raises_only_dat_error(flips: list[int]) -> None:
    data = bytearray(encode_geosite_dat(SITES))
    for i, value in enumerate(flips):
        data[(i * 37) % len(data)] = value
    with contextlib.suppress(DatError):
        read_geosite_dat(bytes(data))


def test_shipped_rules_round_trip() -> None:
    loader = GeositeLoader(RULES)
    names = sorted(p.name for p in RULES.iterdir() if valid_list_name(p.name))
    assert len(names) > 1000
    table = {name.upper(): dat_domains(loader.resolve(name)) for name in names}
    read = read_geosite_dat(encode_geosite_dat(table))
    assert read == table
    assert read.lookup("google") == dat_domains(loader.resolve("google"))
