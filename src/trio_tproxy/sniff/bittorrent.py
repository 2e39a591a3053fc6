"""BitTorrent sniffers: the TCP peer handshake, uTP connection setup, DHT (KRPC).

All three return protocol ``"bittorrent"`` (v2ray returns that name for TCP and
uTP), so one routing rule ``protocol = ["bittorrent"]`` catches all of a client's
traffic. Encrypted peer connections (MSE/PE) look random and are not recognised.

uTP (BEP 29) has no magic number, and v2ray's check (version nibble 1, type <= 4,
extension byte 0/1) also accepts e.g. a WireGuard handshake initiation
(``01 00 00 00``) as ST_DATA. Since a flow is sniffed on its first datagram, only
a connection-opening ST_SYN is accepted here: version 1, type 4, a well-formed
chain of known extensions, and no payload. A uTP flow first seen mid-stream (the
proxy restarted) is therefore not recognised; that is the price of not claiming
random UDP.
"""

from __future__ import annotations

import re
from typing import Final, TypeAlias

from .outcome import NEED_MORE, NOT_THIS, Sniffed, SniffOutcome

__all__ = [
    "DHT_MAX_PEEK",
    "MAX_PEEK",
    "PROTOCOL",
    "UTP_MAX_PEEK",
    "sniff_bittorrent",
    "sniff_dht",
    "sniff_utp",
]

PROTOCOL: Final = "bittorrent"

# BEP 3: pstrlen (19) and pstr; the rest of the 68-byte handshake (reserved bits,
# info_hash, peer_id) says nothing more about the protocol, as in v2ray.
HANDSHAKE_PREFIX: Final = b"\x13BitTorrent protocol"
MAX_PEEK: Final = len(HANDSHAKE_PREFIX)

UTP_HEADER_LEN: Final = 20
UTP_VERSION: Final = 1
UTP_ST_SYN: Final = 4
# Known extensions and their legal lengths: 1 selective ACK (BEP 29, a multiple of
# 4 bytes), 2 extension bits (libutp, 8 bytes), 3 close reason (libtorrent, 4).
_UTP_EXTENSION_OK: Final = {
    1: lambda length: length >= 4 and length % 4 == 0,
    2: lambda length: length == 8,
    3: lambda length: length == 4,
}
# A payload-less SYN is the header plus a few small extensions (libutp's: 30 bytes).
UTP_MAX_PEEK: Final = 64

# KRPC messages are single small bencoded dicts; a get_peers reply with many
# "values" stays under one 1500-byte MTU, BEP 44 items under 1000 bytes of value.
DHT_MAX_PEEK: Final = 2048
# A KRPC message nests dict -> dict -> list -> string at most.
_BENCODE_MAX_DEPTH: Final = 4
_NODE_ID_LEN: Final = 20
_BENCODE_INT_RE: Final = re.compile(rb"-?[0-9]+")


def sniff_bittorrent(data: bytes) -> SniffOutcome:
    """BEP 3 peer handshake at the start of a TCP stream."""
    head = data[:MAX_PEEK]
    if head == HANDSHAKE_PREFIX:
        return Sniffed(PROTOCOL)
    if len(head) < MAX_PEEK and HANDSHAKE_PREFIX.startswith(head):
        return NEED_MORE
    return NOT_THIS


def sniff_utp(datagram: bytes) -> SniffOutcome:
    """BEP 29 ST_SYN, the first datagram of a uTP connection."""
    if not UTP_HEADER_LEN <= len(datagram) <= UTP_MAX_PEEK:
        return NOT_THIS
    if datagram[0] != (UTP_ST_SYN << 4) | UTP_VERSION:
        return NOT_THIS
    extension = datagram[1]
    pos = UTP_HEADER_LEN
    while extension != 0:
        is_legal = _UTP_EXTENSION_OK.get(extension)
        if is_legal is None or pos + 2 > len(datagram):
            return NOT_THIS
        extension, length = datagram[pos], datagram[pos + 1]
        pos += 2 + length
        if not is_legal(length):
            return NOT_THIS
    if pos != len(datagram):
        return NOT_THIS
    return Sniffed(PROTOCOL)


def sniff_dht(datagram: bytes) -> SniffOutcome:
    """BEP 5 KRPC query, response or error: one bencoded dict, nothing after it."""
    if len(datagram) > DHT_MAX_PEEK or datagram[:1] != b"d" or not datagram[1:2].isdigit():
        return NOT_THIS
    try:
        message, end = _bdecode(datagram, 0, 0)
    except _BencodeError:
        return NOT_THIS
    if end != len(datagram) or not isinstance(message, dict):
        return NOT_THIS
    return Sniffed(PROTOCOL) if _is_krpc(message) else NOT_THIS


def _is_krpc(message: dict[bytes, Bencoded]) -> bool:
    kind = message.get(b"y")
    if not isinstance(message.get(b"t"), bytes):
        return False
    if kind == b"q":
        arguments = message.get(b"a")
        return isinstance(message.get(b"q"), bytes) and _has_node_id(arguments)
    if kind == b"r":
        return _has_node_id(message.get(b"r"))
    if kind == b"e":
        return isinstance(message.get(b"e"), list)
    return False


def _has_node_id(body: object) -> bool:
    if not isinstance(body, dict):
        return False
    node_id = body.get(b"id")
    return isinstance(node_id, bytes) and len(node_id) == _NODE_ID_LEN


class _BencodeError(Exception):
    pass


Bencoded: TypeAlias = bytes | int | list["Bencoded"] | dict[bytes, "Bencoded"]


def _bdecode(buf: bytes, pos: int, depth: int) -> tuple[Bencoded, int]:
    """One bencoded value at ``pos`` -> (value, end). Dict key order is not checked:
    some DHT implementations do not sort keys."""
    if pos >= len(buf) or depth > _BENCODE_MAX_DEPTH:
        raise _BencodeError
    lead = buf[pos]
    if lead == 0x64:  # d
        items: dict[bytes, Bencoded] = {}
        pos += 1
        while pos < len(buf) and buf[pos] != 0x65:  # e
            key, pos = _bdecode_string(buf, pos)
            items[key], pos = _bdecode(buf, pos, depth + 1)
        return items, _expect_end(buf, pos)
    if lead == 0x6C:  # l
        values: list[Bencoded] = []
        pos += 1
        while pos < len(buf) and buf[pos] != 0x65:
            value, pos = _bdecode(buf, pos, depth + 1)
            values.append(value)
        return values, _expect_end(buf, pos)
    if lead == 0x69:  # i
        end = buf.find(b"e", pos + 1, pos + 22)
        digits = buf[pos + 1 : end]
        if end < 0 or _BENCODE_INT_RE.fullmatch(digits) is None:
            raise _BencodeError
        return int(digits), end + 1
    return _bdecode_string(buf, pos)


def _bdecode_string(buf: bytes, pos: int) -> tuple[bytes, int]:
    colon = buf.find(b":", pos, pos + 6)
    digits = buf[pos:colon]
    if colon < 0 or not digits.isdigit():
        raise _BencodeError
    start = colon + 1
    end = start + int(digits)
    if end > len(buf):
        raise _BencodeError
    return buf[start:end], end


def _expect_end(buf: bytes, pos: int) -> int:
    if pos >= len(buf):
        raise _BencodeError
    return pos + 1
