"""DNS query sniffer: recognise a plain DNS query datagram and read its QNAME.

Parsed by hand rather than with dnslib: only the 12-byte header and the first
question are looked at, and the checks are what makes random UDP fail cheaply.
A datagram is whole, so there is no NEED_MORE here: a short one is NOT_THIS.
DNS over TCP (2-byte length prefix) is not sniffed.
"""

from __future__ import annotations

import struct
from typing import Final

from .outcome import NOT_THIS, Sniffed, SniffOutcome, to_domain

__all__ = ["MAX_PEEK", "PROTOCOL", "sniff_dns"]

PROTOCOL: Final = "dns"

HEADER_LEN: Final = 12
# RFC 1035 §3.1: a name is at most 255 octets on the wire.
MAX_NAME_WIRE_LEN: Final = 255
# Header, the longest QNAME, QTYPE and QCLASS: the first question is all we read.
MAX_PEEK: Final = HEADER_LEN + MAX_NAME_WIRE_LEN + 4

_FLAG_QR: Final = 0x80
_FLAG_Z: Final = 0x40
_OPCODE_QUERY: Final = 0
# IN, CH, HS, NONE, ANY; the top bit is mDNS's "unicast response" request (RFC 6762).
_QUERY_CLASSES: Final = frozenset((1, 3, 4, 254, 255))
# What stub resolvers, dig and browsers send: no answers, at most the SOA of an IXFR
# in authority, at most OPT and TSIG/SIG(0) in additional.
_MAX_AUTHORITY: Final = 1
_MAX_ADDITIONAL: Final = 2

_COUNTS: Final = struct.Struct(">HHHH")
_TYPE_CLASS: Final = struct.Struct(">HH")


def sniff_dns(datagram: bytes) -> SniffOutcome:
    """``Sniffed("dns", qname)`` for a DNS query datagram, else NOT_THIS."""
    packet = datagram[:MAX_PEEK]
    if len(packet) < HEADER_LEN + 1 + 4:
        return NOT_THIS
    flags, low_flags = packet[2], packet[3]
    if flags & _FLAG_QR or (flags >> 3) & 0x0F != _OPCODE_QUERY:
        return NOT_THIS
    if low_flags & _FLAG_Z or low_flags & 0x0F:  # reserved bit, RCODE
        return NOT_THIS
    questions, answers, authority, additional = _COUNTS.unpack_from(packet, 4)
    if questions == 0 or answers != 0 or authority > _MAX_AUTHORITY or additional > _MAX_ADDITIONAL:
        return NOT_THIS

    labels: list[bytes] = []
    pos = HEADER_LEN
    while True:
        if pos >= len(packet):
            return NOT_THIS
        label_len = packet[pos]
        if label_len == 0:
            pos += 1
            break
        if label_len & 0xC0:
            return NOT_THIS  # compression pointer: nothing to point back to yet
        labels.append(packet[pos + 1 : pos + 1 + label_len])
        pos += 1 + label_len
    if pos + 4 > len(packet):
        return NOT_THIS
    qtype, qclass = _TYPE_CLASS.unpack_from(packet, pos)
    if qtype == 0 or qclass & 0x7FFF not in _QUERY_CLASSES:
        return NOT_THIS
    return Sniffed(PROTOCOL, _qname_to_domain(labels))


def _qname_to_domain(labels: list[bytes]) -> str | None:
    # A "." inside a label cannot be written as a dotted name without ambiguity.
    if not labels or any(b"." in label for label in labels):
        return None
    return to_domain(b".".join(labels))
