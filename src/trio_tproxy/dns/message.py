"""DNS messages of clients: parse their queries, build our replies (pure).

Parsing goes through dnslib, whose every failure is a ``DNSError`` (or, for inputs it
never anticipated, some other ``Exception``): both become :class:`BadMessage`, and a
client's garbage becomes FORMERR or nothing at all, never an exception further up.
Replies are packed by hand: a fixed header, the question exactly as the client sent it
(0x20 mixed case survives), and answers that point back at it (``0xC00C``), which is
both cheaper than dnslib and easy to check byte by byte. Our own queries to upstreams
and their answers are in :mod:`.exchange`.

Wire format: RFC 1035 section 4; EDNS0 OPT: RFC 6891.

dnslib is imported by the first message that needs it, not with this module: a process
whose DNS never parses a message in general (no DNS servers, listener or dns outbound
in its config: the system resolver answers) does not pay its ~0.6 MB.
"""

from __future__ import annotations

import re
import struct
from typing import TYPE_CHECKING, Final

import attrs

from ..addr import IPAddress
from ..route.facts import normalize_domain

if TYPE_CHECKING:
    from dnslib import DNSRecord

__all__ = [
    "CLASSIC_UDP_SIZE", "EDNS_UDP_SIZE", "FORMERR", "HEADER_LEN", "NOERROR", "NOTIMP",
    "NXDOMAIN", "QTYPE_A", "QTYPE_AAAA", "SERVFAIL", "BadMessage", "Query", "address_reply",
    "error_reply", "fit_udp", "formerr_for", "is_address_name", "load_dnslib", "opt_record",
    "parse_dns", "parse_query", "parse_query_general", "qtype_name", "with_id",
]  # fmt: skip

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
QTYPE_A: Final = 1
QTYPE_AAAA: Final = 28
QTYPE_OPT: Final = 41
CLASS_IN: Final = 1
OPCODE_QUERY: Final = 0

HEADER_LEN: Final = 12
# What v2ray advertises (reference section 5); under the usual 1500-byte path MTU.
EDNS_UDP_SIZE: Final = 1350
# RFC 1035 4.2.1: without EDNS a UDP reply is at most 512 bytes.
CLASSIC_UDP_SIZE: Final = 512

_HEADER = struct.Struct(">HHHHHH")
_RR_FIXED = struct.Struct(">HHIH")
_FLAG_QR, _FLAG_TC, _FLAG_RD, _FLAG_RA = 0x8000, 0x0200, 0x0100, 0x0080
_POINTER_TO_QNAME: Final = b"\xc0\x0c"
# A host name as the address path accepts it: letters, digits, '-' and '_' (real zones
# carry underscores in A records), labels of 1-63, at most 253 characters.
_NAME_RE = re.compile(r"(?=.{1,253}$)([a-z0-9_-]{1,63})(\.[a-z0-9_-]{1,63})*")


class BadMessage(ValueError):
    """A message that cannot be parsed, or an answer that does not fit its question."""


@attrs.frozen
class Query:
    """One client query, as the splitter needs it."""

    id: int
    name: str  # normalised: lower-case, no trailing dot ("" for the root)
    qtype: int
    qclass: int
    rd: bool
    question: bytes  # the question section as received, echoed in replies
    edns_size: int | None  # the client's advertised UDP payload size; None without OPT
    dnssec_ok: bool
    raw: bytes

    @property
    def udp_limit(self) -> int:
        """The largest UDP reply this client accepts (RFC 6891 6.2.5: at least 512)."""
        if self.edns_size is None:
            return CLASSIC_UDP_SIZE
        return max(CLASSIC_UDP_SIZE, self.edns_size)


def load_dnslib() -> None:
    """Import dnslib now, for a process about to fork workers whose DNS will parse
    messages: imported before the fork, it is shared instead of loaded by every worker."""
    import dnslib  # noqa: F401, PLC0415


def qtype_name(qtype: int) -> str:
    from dnslib import QTYPE  # noqa: PLC0415 - on first use (module docstring)

    return str(QTYPE.get(qtype, f"TYPE{qtype}"))


def is_address_name(name: str) -> bool:
    return _NAME_RE.fullmatch(name) is not None


def parse_dns(data: bytes) -> DNSRecord:
    from dnslib import DNSRecord  # noqa: PLC0415 - on first use (module docstring)

    try:
        return DNSRecord.parse(data)
    except Exception as exc:  # dnslib raises DNSError, and worse on inputs it never saw
        raise BadMessage(f"unparsable DNS message: {exc}") from None


def _question_section(data: bytes) -> bytes | None:
    """The first question's bytes, if its name is written without compression."""
    pos = HEADER_LEN
    while pos < len(data):
        length = data[pos]
        if length == 0:
            end = pos + 5
            return data[HEADER_LEN:end] if end <= len(data) else None
        if length & 0xC0:
            return None
        pos += 1 + length
    return None


_PLAIN_LABEL = re.compile(rb"[A-Za-z0-9_-]{1,63}")
_OPT_FIXED = struct.Struct(">BHHIH")


def _parse_plain_query(data: bytes) -> Query | None:
    """The common query (what stub resolvers send: one question, no compression, at
    most an OPT record) without dnslib, ~10x faster; None for anything else, which then
    takes the general path. Tests check that both paths agree on every input."""
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & 0xF800 or qdcount != 1 or ancount or nscount or arcount > 1:
        return None  # QR set, an opcode other than QUERY, or an unusual shape
    labels: list[bytes] = []
    pos = HEADER_LEN
    while True:
        if pos >= len(data):
            return None
        length = data[pos]
        if length == 0:
            break
        label = data[pos + 1 : pos + 1 + length]
        if length > 63 or not _PLAIN_LABEL.fullmatch(label):
            return None
        labels.append(label)
        pos += 1 + length
    end = pos + 5
    if end > len(data) or end - HEADER_LEN > 259:
        return None
    qtype, qclass = struct.unpack_from(">HH", data, pos + 1)
    edns_size, dnssec_ok = None, False
    if arcount:
        if len(data) < end + _OPT_FIXED.size:
            return None
        root, rtype, size, ttl, rdlength = _OPT_FIXED.unpack_from(data, end)
        options = end + _OPT_FIXED.size
        if root or rtype != QTYPE_OPT or options + rdlength != len(data):
            return None
        while len(data) - options > 4:  # option TLVs, walked as dnslib walks them
            options += 4 + struct.unpack_from(">H", data, options + 2)[0]
        if options > len(data):
            return None
        edns_size, dnssec_ok = size, bool(ttl & 0x8000)
    elif end != len(data):
        return None
    return Query(
        id=qid, name=b".".join(labels).decode("ascii").lower(), qtype=qtype, qclass=qclass,
        rd=bool(flags & _FLAG_RD), question=data[HEADER_LEN:end], edns_size=edns_size,
        dnssec_ok=dnssec_ok, raw=data,
    )  # fmt: skip


def parse_query(data: bytes) -> Query:
    """A client query; raises BadMessage (answer with :func:`formerr_for`)."""
    if len(data) < HEADER_LEN:
        raise BadMessage("shorter than a DNS header")
    plain = _parse_plain_query(data)
    if plain is not None:
        return plain
    return parse_query_general(data)


def parse_query_general(data: bytes) -> Query:
    """:func:`parse_query` through dnslib, for any shape of message."""
    if len(data) < HEADER_LEN:
        raise BadMessage("shorter than a DNS header")
    record = parse_dns(data)
    header = record.header
    if header.qr:
        raise BadMessage("a response, not a query")
    if header.opcode != OPCODE_QUERY:
        raise BadMessage(f"opcode {header.opcode} is not QUERY")
    if len(record.questions) != 1:
        raise BadMessage(f"{len(record.questions)} questions (exactly one is answerable)")
    question = record.questions[0]
    raw_question = _question_section(data)
    if raw_question is None:  # a pointer in the question: write it out plainly
        raw_question = question.pack()
    edns_size, dnssec_ok = None, False
    opts = [rr for rr in record.ar if rr.rtype == QTYPE_OPT]
    if len(opts) > 1:
        raise BadMessage("more than one OPT record")  # RFC 6891 6.1.1
    if opts:
        edns_size, dnssec_ok = opts[0].rclass, bool(opts[0].ttl & 0x8000)
    try:
        name = normalize_domain(str(question.qname))
    except UnicodeError:
        raise BadMessage("question name is not text") from None
    return Query(
        id=header.id, name=name, qtype=question.qtype, qclass=question.qclass,
        rd=bool(header.rd), question=raw_question, edns_size=edns_size,
        dnssec_ok=dnssec_ok, raw=data,
    )  # fmt: skip


def formerr_for(data: bytes) -> bytes | None:
    """FORMERR for a query we could not parse, or None when not even that is possible.

    Needs the 12-byte header (for the ID); a message that claims to be a response is
    never answered (answering answers is how reflection loops start).
    """
    if len(data) < HEADER_LEN:
        return None
    qid, flags = struct.unpack_from(">HH", data)
    if flags & _FLAG_QR:
        return None
    flags = _FLAG_QR | (flags & 0x7800) | (flags & _FLAG_RD) | _FLAG_RA | FORMERR
    return _HEADER.pack(qid, flags, 0, 0, 0, 0)


def opt_record(size: int = EDNS_UDP_SIZE, options: bytes = b"") -> bytes:
    return b"\x00" + _RR_FIXED.pack(QTYPE_OPT, size, 0, len(options)) + options


def _reply_header(query: Query, rcode: int, answers: int, additional: int) -> bytes:
    # v2ray's dns outbound: QR=1 RD=1 RA=1, the question echoed (reference section 4).
    flags = _FLAG_QR | _FLAG_RD | _FLAG_RA | (rcode & 0x0F)
    return _HEADER.pack(query.id, flags, 1, answers, 0, additional)


def address_reply(
    query: Query, addresses: tuple[IPAddress, ...], ttl: int, rcode: int = NOERROR
) -> bytes:
    """The reply to an A/AAAA query: ``addresses`` of the asked family, compressed names."""
    wanted = 4 if query.qtype == QTYPE_A else 6
    records = [
        _POINTER_TO_QNAME + _RR_FIXED.pack(query.qtype, CLASS_IN, ttl, len(ip.packed)) + ip.packed
        for ip in addresses
        if ip.version == wanted
    ]
    opt = b"" if query.edns_size is None else opt_record()
    header = _reply_header(query, rcode, len(records), 1 if opt else 0)
    return b"".join((header, query.question, *records, opt))


def error_reply(query: Query, rcode: int) -> bytes:
    opt = b"" if query.edns_size is None else opt_record()
    return _reply_header(query, rcode, 0, 1 if opt else 0) + query.question + opt


def with_id(message: bytes, qid: int) -> bytes:
    return struct.pack(">H", qid) + message[2:]


def fit_udp(query: Query, reply: bytes) -> bytes:
    """``reply`` if it fits the client's UDP size, else a TC=1 reply (the client retries
    over TCP, RFC 7766)."""
    if len(reply) <= query.udp_limit:
        return reply
    flags = struct.unpack_from(">H", reply, 2)[0] | _FLAG_TC
    opt = b"" if query.edns_size is None else opt_record()
    header = _HEADER.pack(query.id, flags, 1, 0, 0, 1 if opt else 0)
    return header + query.question + opt
