"""udp/packet.py byte by byte: headers, checksums, limits (pure, no I/O)."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_tproxy.udp.packet import internet_checksum, udp_packet

V4A, V4B = ipaddress.IPv4Address("10.77.2.2"), ipaddress.IPv4Address("10.77.1.2")
V6A, V6B = ipaddress.IPv6Address("fd77:2::2"), ipaddress.IPv6Address("fd77:1::2")


def naive_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def pseudo_header(src: ipaddress._BaseAddress, dst: ipaddress._BaseAddress, length: int) -> bytes:
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, 17, length)
    return src.packed + dst.packed + struct.pack("!I3xB", length, 17)


def test_rfc1071_example() -> None:
    # RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2.
    assert internet_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2


@given(st.binary(max_size=3000))
def test_checksum_matches_the_word_by_word_sum(data: bytes) -> None:
    assert internet_checksum(data) == naive_checksum(data)


def test_all_zero_and_all_ones() -> None:
    assert internet_checksum(b"") == 0xFFFF
    assert internet_checksum(b"\0" * 10) == 0xFFFF
    assert internet_checksum(b"\xff\xff" * 3) == 0  # sum is -0: complement is +0


def test_ipv4_packet_fields() -> None:
    packet = udp_packet(V4A, 53, V4B, 40000, b"hello")
    assert len(packet) == 20 + 8 + 5
    ver_ihl, tos, total, ident, frag, ttl, proto, _, src, dst = struct.unpack(
        "!BBHHHBBH4s4s", packet[:20]
    )
    assert (ver_ihl, tos, total, ident, frag, ttl, proto) == (0x45, 0, 33, 0, 0, 64, 17)
    assert (src, dst) == (V4A.packed, V4B.packed)
    assert internet_checksum(packet[:20]) == 0  # a valid header sums to all ones
    sport, dport, length, _ = struct.unpack("!HHHH", packet[20:28])
    assert (sport, dport, length) == (53, 40000, 13)
    assert packet[28:] == b"hello"
    assert internet_checksum(pseudo_header(V4A, V4B, 13) + packet[20:]) == 0


def test_ipv6_packet_fields() -> None:
    packet = udp_packet(V6A, 443, V6B, 5555, b"x" * 100)
    first, payload_len, next_header, hops, src, dst = struct.unpack("!IHBB16s16s", packet[:40])
    assert (first, payload_len, next_header, hops) == (6 << 28, 108, 17, 64)
    assert (src, dst) == (V6A.packed, V6B.packed)
    assert struct.unpack("!HHH", packet[40:46]) == (443, 5555, 108)
    assert internet_checksum(pseudo_header(V6A, V6B, 108) + packet[40:]) == 0


@pytest.mark.parametrize(("src", "dst"), [(V4A, V4B), (V6A, V6B)])
def test_a_computed_zero_checksum_is_sent_as_all_ones(src, dst) -> None:  # type: ignore[no-untyped-def]
    # Pick the 2-byte payload that makes the sum all ones, so the checksum computes to 0.
    partial = naive_checksum(pseudo_header(src, dst, 10) + struct.pack("!HHHH", 7, 9, 10, 0))
    word = struct.pack("!H", partial)  # ~sum: adding it makes the sum 0xffff
    packet = udp_packet(src, 7, dst, 9, word)
    udp = packet[20:] if src.version == 4 else packet[40:]
    assert udp[6:8] == b"\xff\xff"
    assert internet_checksum(pseudo_header(src, dst, 10) + udp) == 0


def test_empty_payload() -> None:
    packet = udp_packet(V4A, 1, V4B, 2, b"")
    assert len(packet) == 28 and struct.unpack("!H", packet[24:26]) == (8,)


def test_limits() -> None:
    assert len(udp_packet(V4A, 1, V4B, 2, b"\0" * 65507)) == 65535
    assert len(udp_packet(V6A, 1, V6B, 2, b"\0" * 65527)) == 40 + 65535
    with pytest.raises(ValueError, match="does not fit an IPv4"):
        udp_packet(V4A, 1, V4B, 2, b"\0" * 65508)
    with pytest.raises(ValueError, match="does not fit an IPv6"):
        udp_packet(V6A, 1, V6B, 2, b"\0" * 65528)
    with pytest.raises(ValueError, match="families differ"):
        udp_packet(V4A, 1, V6B, 2, b"")
    with pytest.raises(ValueError, match="port out of range"):
        udp_packet(V4A, 70000, V4B, 2, b"")


@given(
    st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
    st.integers(0, 65535), st.integers(0, 65535), st.binary(max_size=2000),
)  # fmt: skip
def test_any_ipv4_datagram_verifies(a: int, b: int, sport: int, dport: int, payload: bytes) -> None:
    src, dst = ipaddress.IPv4Address(a), ipaddress.IPv4Address(b)
    packet = udp_packet(src, sport, dst, dport, payload)
    assert internet_checksum(packet[:20]) == 0
    assert internet_checksum(pseudo_header(src, dst, 8 + len(payload)) + packet[20:]) == 0
    assert packet[28:] == payload
