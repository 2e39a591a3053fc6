"""UDP datagrams as whole IP packets, for the raw reply path (``udp/rawsend.py``). Pure.

A reply must reach the client from the remote's address *and port*. When a transparent
socket cannot be bound there (a local service owns the port: "address already in use",
v2ray-core#2484), the datagram is built here, headers and checksums included, and sent
through an IPPROTO_RAW socket, which takes the IP header as given.
"""

from __future__ import annotations

import struct
from typing import Final

from ..addr import IPAddress

UDP_PROTO: Final = 17
TTL: Final = 64  # Linux's default ip_default_ttl / hop_limit
IPV4_HEADER: Final = 20
IPV6_HEADER: Final = 40
UDP_HEADER: Final = 8
MAX_PACKET: Final = 65535  # IPv4 total length / IPv6 payload length are 16-bit fields

_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_IPV6 = struct.Struct("!IHBB16s16s")
_UDP = struct.Struct("!HHHH")


def internet_checksum(data: bytes) -> int:
    """RFC 1071: the one's complement of the one's complement sum of 16-bit words.

    The sum is computed as the big-endian integer modulo 0xFFFF: 2**16 = 1 (mod 0xFFFF),
    so the number and the sum of its 16-bit digits agree modulo 0xFFFF, and Python's
    big integers do that in C, ~100x faster than summing words in a loop.
    """
    if len(data) % 2:
        data += b"\0"
    value = int.from_bytes(data, "big")
    folded = value % 0xFFFF
    if folded == 0 and value:
        folded = 0xFFFF  # a non-zero sum is never +0 in one's complement
    return ~folded & 0xFFFF


def udp_packet(src: IPAddress, sport: int, dst: IPAddress, dport: int, payload: bytes) -> bytes:
    """The IPv4 or IPv6 packet carrying ``payload`` from src:sport to dst:dport.

    Raises ValueError if the families differ, a port is out of range or the packet
    would exceed the 16-bit length fields.
    """
    if src.version != dst.version:
        raise ValueError(f"address families differ: {src} -> {dst}")
    if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
        raise ValueError(f"port out of range: {sport} -> {dport}")
    length = UDP_HEADER + len(payload)
    if src.version == 4:
        if IPV4_HEADER + length > MAX_PACKET:
            raise ValueError(f"{len(payload)}-byte payload does not fit an IPv4 packet")
        pseudo = src.packed + dst.packed + struct.pack("!BBH", 0, UDP_PROTO, length)
    else:
        if length > MAX_PACKET:
            raise ValueError(f"{len(payload)}-byte payload does not fit an IPv6 packet")
        pseudo = src.packed + dst.packed + struct.pack("!I3xB", length, UDP_PROTO)
    checksum = internet_checksum(pseudo + _UDP.pack(sport, dport, length, 0) + payload)
    # RFC 768: a computed 0 is sent as all ones (0 means "no checksum" in IPv4, and is
    # invalid in IPv6, RFC 8200 section 8.1).
    segment = _UDP.pack(sport, dport, length, checksum or 0xFFFF) + payload
    if src.version == 4:
        header = _IPV4.pack(
            0x45, 0, IPV4_HEADER + length, 0, 0, TTL, UDP_PROTO, 0, src.packed, dst.packed
        )
        header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
        return header + segment
    return _IPV6.pack(6 << 28, length, UDP_PROTO, TTL, src.packed, dst.packed) + segment
