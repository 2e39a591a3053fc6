"""BitTorrent (TCP handshake, uTP, DHT) and DNS query sniffing."""

from __future__ import annotations

import random

import dnslib
import pytest
from sniff_corpus import load, load_flow

from trio_tproxy.sniff import (
    NEED_MORE,
    NOT_THIS,
    Sniffed,
    SniffOutcome,
    sniff_bittorrent,
    sniff_datagrams,
    sniff_dht,
    sniff_dns,
    sniff_utp,
)

BITTORRENT = Sniffed("bittorrent")
RNG = random.Random(7)  # fixed, so that parametrize ids are stable
HANDSHAKE = b"\x13BitTorrent protocol" + bytes(8) + b"\x11" * 20 + b"-XX0001-" + b"1" * 12


# -- TCP handshake -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (HANDSHAKE, BITTORRENT),
        (HANDSHAKE[:20], BITTORRENT),
        (HANDSHAKE[:19], NEED_MORE),
        (b"", NEED_MORE),
        (b"\x13", NEED_MORE),
        (b"\x13BitTorrent Protocol", NOT_THIS),
        (b"\x12BitTorrent protocol", NOT_THIS),
        (b"\x13BitTorrent protocoX", NOT_THIS),
        (RNG.randbytes(96), NOT_THIS),  # MSE/PE encrypted handshake: random-looking
    ],
)
def test_bittorrent_handshake(data: bytes, expected: SniffOutcome) -> None:
    assert sniff_bittorrent(data) == expected


# -- uTP -------------------------------------------------------------------------------------


def utp(
    type_version: int, extension: int = 0, extensions: bytes = b"", payload: bytes = b""
) -> bytes:
    header = (
        bytes((type_version, extension)) + b"\x12\x34" + RNG.randbytes(12) + b"\x00\x01\x00\x00"
    )
    return header + extensions + payload


@pytest.mark.parametrize(
    ("datagram", "expected"),
    [
        (utp(0x41), BITTORRENT),  # libtorrent's SYN
        (utp(0x41, 2, b"\x00\x08" + bytes(8)), BITTORRENT),  # libutp's SYN: extension bits
        (utp(0x41, 1, b"\x02\x04" + bytes(4) + b"\x00\x08" + bytes(8)), BITTORRENT),
        (utp(0x41, 2, b"\x00\x07" + bytes(7)), NOT_THIS),  # bad extension length
        (utp(0x41, 9, b"\x00\x04" + bytes(4)), NOT_THIS),  # unknown extension
        (utp(0x41, 2, b"\x00\x08" + bytes(4)), NOT_THIS),  # truncated chain
        (utp(0x41, payload=b"x"), NOT_THIS),  # a SYN has no payload
        (utp(0x01, payload=b"data"), NOT_THIS),  # ST_DATA: not a connection start
        (utp(0x21), NOT_THIS),  # ST_STATE
        (utp(0x42), NOT_THIS),  # version 2
        (utp(0x51), NOT_THIS),  # type 5
        (b"\x01\x00\x00\x00" + RNG.randbytes(144), NOT_THIS),  # WireGuard handshake initiation
        (utp(0x41)[:19], NOT_THIS),
        (b"", NOT_THIS),
    ],
)
def test_utp(datagram: bytes, expected: SniffOutcome) -> None:
    assert sniff_utp(datagram) == expected


# -- DHT -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datagram", "expected"),
    [
        # BEP 5 examples
        (b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe", BITTORRENT),
        (b"d1:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re", BITTORRENT),
        (b"d1:eli201e23:A Generic Error Ocurrede1:t2:aa1:y1:ee", BITTORRENT),
        (
            b"d1:ad2:id20:abcdefghij01234567896:target20:mnopqrstuvwxyz123456e"
            b"1:q9:find_node1:t2:aa1:y1:qe",
            BITTORRENT,
        ),
        # BEP 42 replies start with "ip"; unsorted keys are tolerated
        (
            b"d2:ip6:\x01\x02\x03\x04\x05\x061:rd2:id20:mnopqrstuvwxyz123456e1:t2:aa1:y1:re",
            BITTORRENT,
        ),
        (b"d1:y1:q1:t2:aa1:q4:ping1:ad2:id20:abcdefghij0123456789ee", BITTORRENT),
        # not KRPC
        (b"d8:announce35:http://tracker.example/announce4:infod4:name1:xee", NOT_THIS),
        (b"d1:ad2:id19:abcdefghij012345678e1:q4:ping1:t2:aa1:y1:qe", NOT_THIS),  # short id
        (b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:xe", NOT_THIS),  # y=x
        (b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:y1:qe", NOT_THIS),  # no t
        (b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qee", NOT_THIS),  # trailing
        (b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:q", NOT_THIS),  # cut
        (b"d1:al" * 10 + b"e" * 20, NOT_THIS),  # nesting too deep
        (b"d1:ai--5ee", NOT_THIS),
        (b"d1:a9999999:xe", NOT_THIS),
        (b"d", NOT_THIS),
        (b"", NOT_THIS),
    ],
)
def test_dht(datagram: bytes, expected: SniffOutcome) -> None:
    assert sniff_dht(datagram) == expected


# -- DNS -------------------------------------------------------------------------------------


def query(name: str = "example.com", qtype: str = "A") -> bytes:
    return bytes(dnslib.DNSRecord.question(name, qtype).pack())


def with_flags(packet: bytes, byte2: int, byte3: int = 0) -> bytes:
    return packet[:2] + bytes((byte2, byte3)) + packet[4:]


def with_counts(packet: bytes, qd: int, an: int, ns: int, ar: int) -> bytes:
    counts = b"".join(c.to_bytes(2, "big") for c in (qd, an, ns, ar))
    return packet[:4] + counts + packet[12:]


@pytest.mark.parametrize(
    ("datagram", "expected"),
    [
        (query(), Sniffed("dns", "example.com")),
        (query("WWW.Example.COM", "AAAA"), Sniffed("dns", "www.example.com")),
        (query("example.com", "HTTPS"), Sniffed("dns", "example.com")),
        (query(".", "NS"), Sniffed("dns", None)),  # root
        (query("_sip._udp.example.com", "SRV"), Sniffed("dns", None)),  # not a host name
        (query("1.0.0.127.in-addr.arpa", "PTR"), Sniffed("dns", "1.0.0.127.in-addr.arpa")),
        (with_flags(query(), 0x01, 0x20), Sniffed("dns", "example.com")),  # RD, AD
        (with_counts(query(), 1, 0, 0, 1) + bytes(11), Sniffed("dns", "example.com")),  # OPT
        (
            b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03a.b\x00\x00\x01\x00\x01",
            Sniffed("dns", None),
        ),  # a "." inside a label
        (with_flags(query(), 0x81, 0x80), NOT_THIS),  # a response
        (with_flags(query(), 0x28), NOT_THIS),  # opcode UPDATE
        (with_flags(query(), 0x01, 0x03), NOT_THIS),  # RCODE set
        (with_flags(query(), 0x01, 0x40), NOT_THIS),  # Z bit
        (with_counts(query(), 0, 0, 0, 0), NOT_THIS),
        (with_counts(query(), 1, 1, 0, 0), NOT_THIS),
        (with_counts(query(), 1, 0, 2, 0), NOT_THIS),
        (with_counts(query(), 1, 0, 0, 3), NOT_THIS),
        (query()[:12] + b"\xc0\x0c\x00\x01\x00\x01", NOT_THIS),  # compression pointer
        (query()[:-2] + b"\x00\x07", NOT_THIS),  # unknown class
        (query()[:-4] + b"\x00\x00\x00\x01", NOT_THIS),  # qtype 0
        (query()[:-1], NOT_THIS),
        (b"", NOT_THIS),
    ],
)
def test_dns(datagram: bytes, expected: SniffOutcome) -> None:
    assert sniff_dns(datagram) == expected


def test_dns_longest_name_fits_max_peek() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters, 255 on the wire
    assert sniff_dns(query(name)) == Sniffed("dns", name)


def test_dns_name_longer_than_255_wire_bytes() -> None:
    labels = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\x00"
    packet = query()[:12] + labels + b"\x00\x01\x00\x01"
    assert sniff_dns(packet) is NOT_THIS


# -- the datagram combinator picks the right one -------------------------------------------------


@pytest.mark.parametrize(
    ("datagram", "protocol"),
    [
        (query(), "dns"),
        (b"d1:ad2:id20:abcdefghij0123456789e1:q4:ping1:t2:aa1:y1:qe", "bittorrent"),
        (utp(0x41), "bittorrent"),
    ],
)
def test_sniff_datagrams_dispatch(datagram: bytes, protocol: str) -> None:
    outcome = sniff_datagrams([datagram])
    assert isinstance(outcome, Sniffed)
    assert outcome.protocol == protocol


def test_quic_is_no_other_udp_protocol() -> None:
    for datagram in load_flow("quic_chrome"):
        assert sniff_dns(datagram) is NOT_THIS
        assert sniff_utp(datagram) is NOT_THIS
        assert sniff_dht(datagram) is NOT_THIS
    assert sniff_utp(load("dns_dig")) is NOT_THIS
