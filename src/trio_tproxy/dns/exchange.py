"""Our queries to upstream servers, and their answers (pure).

A query is what v2ray sends (reference section 5): RD=1, one question, an EDNS0 OPT
record advertising 1350 bytes, and the client-subnet option (RFC 7871) only when asked
for. An answer must answer *that* query (ID, QR, the question) or it is a
:class:`~.message.BadMessage`: a stray or spoofed datagram is not an answer.
Negative answers are cached as long as their SOA says (RFC 2308 section 5).
"""

from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING, Final

import attrs

from ..addr import IPAddress, unmap
from ..route.facts import normalize_domain
from .message import (
    EDNS_UDP_SIZE,
    HEADER_LEN,
    QTYPE_A,
    QTYPE_AAAA,
    BadMessage,
    Query,
    opt_record,
    parse_dns,
)

if TYPE_CHECKING:
    from dnslib import DNSRecord

__all__ = [
    "NEGATIVE_TTL_DEFAULT", "UpstreamAnswer", "age_ttls", "build_query", "check_forwarded",
    "encode_name", "forwarded_ttl", "parse_answer",
]  # fmt: skip

QTYPE_SOA: Final = 6
QTYPE_OPT: Final = 41
CLASS_IN: Final = 1
OPT_CLIENT_SUBNET: Final = 8
# A negative answer without an SOA to say how long (RFC 2308 section 5) is kept this long.
NEGATIVE_TTL_DEFAULT: Final = 30
_HEADER = struct.Struct(">HHHHHH")
_FLAG_QR, _FLAG_RD = 0x8000, 0x0100


@attrs.frozen
class UpstreamAnswer:
    rcode: int
    truncated: bool
    addresses: tuple[IPAddress, ...]  # the asked-for type's records in the answer section
    ttl: int  # seconds an answer may be cached; for a negative one, from its SOA


def encode_name(name: str) -> bytes:
    """Wire form of a validated ASCII name (``""`` is the root)."""
    out = bytearray()
    for label in name.split(".") if name else ():
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise BadMessage(f"bad label in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    if len(out) > 255:
        raise BadMessage(f"name too long: {name!r}")
    return bytes(out)


def _client_subnet(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bytes:
    family = 1 if network.version == 4 else 2
    prefix = network.prefixlen
    address = network.network_address.packed[: (prefix + 7) // 8]
    body = struct.pack(">HBB", family, prefix, 0) + address
    return struct.pack(">HH", OPT_CLIENT_SUBNET, len(body)) + body


def build_query(
    name: str,
    qtype: int,
    qid: int,
    *,
    client_subnet: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None,
) -> bytes:
    """An upstream query as v2ray sends it: RD=1, one question, EDNS0 OPT (UDP 1350);
    the client-subnet option only when asked for (it tells the upstream who asks)."""
    options = b"" if client_subnet is None else _client_subnet(client_subnet)
    header = _HEADER.pack(qid, _FLAG_RD, 1, 0, 0, 1)
    question = encode_name(name) + struct.pack(">HH", qtype, CLASS_IN)
    return header + question + opt_record(EDNS_UDP_SIZE, options)


def parse_answer(data: bytes, qid: int, name: str, qtype: int) -> UpstreamAnswer:
    """An upstream's answer to our query ``(qid, name, qtype)``; raises BadMessage if it
    is malformed or answers another question (a stray or spoofed datagram)."""
    record = parse_dns(data)
    header = record.header
    if header.id != qid or not header.qr:
        raise BadMessage("not the answer to our query (ID or QR)")
    if header.tc:
        return UpstreamAnswer(header.rcode, True, (), 0)
    questions = record.questions
    if len(questions) != 1 or questions[0].qtype != qtype:
        raise BadMessage("the answer's question is not ours")
    try:
        asked = normalize_domain(str(questions[0].qname))
    except UnicodeError:
        raise BadMessage("question name is not text") from None
    if asked != name:
        raise BadMessage("the answer's question is not ours")
    addresses: list[IPAddress] = []
    ttls: list[int] = []
    for rr in record.rr:
        ttls.append(rr.ttl)
        if rr.rtype == qtype and qtype in (QTYPE_A, QTYPE_AAAA):
            raw = bytes(rr.rdata.data)
            if len(raw) not in (4, 16):
                raise BadMessage("malformed address record")
            addresses.append(unmap(ipaddress.ip_address(raw)))
    ttl = min(ttls) if addresses else _negative_ttl(record)
    return UpstreamAnswer(header.rcode, False, tuple(dict.fromkeys(addresses)), ttl)


def _negative_ttl(record: DNSRecord) -> int:
    """RFC 2308 section 5: min(SOA TTL, SOA MINIMUM) from the authority section."""
    for rr in record.auth:
        if rr.rtype == QTYPE_SOA:
            times = getattr(rr.rdata, "times", None)
            minimum = int(times[-1]) if times else rr.ttl
            return int(min(rr.ttl, minimum))
    return NEGATIVE_TTL_DEFAULT


def forwarded_ttl(data: bytes) -> int:
    """How long a forwarded answer may be cached: the smallest TTL in it (OPT aside)."""
    record = parse_dns(data)
    ttls = [rr.ttl for rr in (*record.rr, *record.auth, *record.ar) if rr.rtype != QTYPE_OPT]
    if record.rr:
        return int(min(ttls))
    return _negative_ttl(record)


def check_forwarded(data: bytes, qid: int, query: Query) -> None:
    """Raise BadMessage unless ``data`` answers ``query`` (sent upstream as ``qid``)."""
    if len(data) < HEADER_LEN:
        raise BadMessage("shorter than a DNS header")
    got_id, flags, qdcount = struct.unpack_from(">HHH", data)
    if got_id != qid or not flags & _FLAG_QR:
        raise BadMessage("not the answer to our query (ID or QR)")
    if qdcount != 1 or data[HEADER_LEN : HEADER_LEN + len(query.question)].lower() != (
        query.question.lower()
    ):
        raise BadMessage("the answer's question is not ours")


def age_ttls(data: bytes, elapsed: int) -> bytes:
    """A cached answer ``elapsed`` seconds later: every TTL lowered by that much (OPT's
    TTL field holds flags, not a TTL, and is left alone)."""
    if elapsed <= 0:
        return data
    record = parse_dns(data)
    for rr in (*record.rr, *record.auth, *record.ar):
        if rr.rtype != QTYPE_OPT:
            rr.ttl = max(0, rr.ttl - elapsed)
    packed: bytes = record.pack()
    return packed
