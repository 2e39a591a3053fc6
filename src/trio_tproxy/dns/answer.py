"""Client messages -> replies: what the ``dns.listen`` listener and the ``dns`` outbound
ask of the splitter.

A/AAAA questions (class IN) are answered by the splitter: same ID, QR=1 RD=1 RA=1, the
question echoed, the TTL left in the cache (reference section 4); a name v2ray's
``ToDomain`` would refuse gets FORMERR. Other types are forwarded to the server the
splitter would choose for the name. Over UDP, a reply larger than the client accepts
becomes TC=1 (the client retries over TCP). Malformed messages get FORMERR when they
carry a header to answer, else nothing; answers are never answered.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

import attrs
import trio

from ..addr import IPAddress
from .message import (
    CLASS_IN,
    FORMERR,
    QTYPE_A,
    QTYPE_AAAA,
    BadMessage,
    Query,
    address_reply,
    error_reply,
    fit_udp,
    formerr_for,
    is_address_name,
    parse_query,
)

log = logging.getLogger("trio_tproxy.dns")

__all__ = ["REPLY_MEMO_LIFETIME", "REPLY_MEMO_SIZE", "ClientAnswers", "is_address_query"]

# Ready replies kept per query (see ClientAnswers.answer_now): seconds, and how many.
REPLY_MEMO_LIFETIME = 1.0
REPLY_MEMO_SIZE = 4096


@attrs.frozen
class Resolution:
    rcode: int
    addresses: tuple[IPAddress, ...]
    ttl: float


class AnswerSource(Protocol):
    """What client answers need of the splitter (dns/service.py implements it)."""

    def lookup_now(self, name: str, qtype: int) -> Resolution | str:
        """An answer without waiting, else the name to ask the servers about."""

    async def lookup(self, name: str, qtype: int) -> Resolution: ...

    def forwarded_now(self, query: Query) -> bytes | None: ...

    async def forward(self, query: Query) -> bytes: ...


class ClientAnswers:
    def __init__(self, service: AnswerSource) -> None:
        self._service = service
        self.replies: dict[tuple[bool, bytes], tuple[float, bytes]] = {}

    def answer_now(self, data: bytes, *, udp: bool) -> bytes | None:
        """The reply when no upstream is needed (malformed, hosts, cache), else None:
        then :meth:`answer` (in a task of its own) does the rest.

        Clients repeat queries byte for byte but for the ID, so a reply made from the
        cache is kept for up to :data:`REPLY_MEMO_LIFETIME` under the query's bytes
        after the ID: a repeat costs one dict probe (its TTLs are at most that stale).
        """
        data = bytes(data)  # a caller's bytearray cannot be a key
        now = trio.current_time()
        memo_key = (udp, data[2:])
        memo = self.replies.get(memo_key)
        if memo is not None and memo[0] > now:
            return data[:2] + memo[1]
        query = _prepare(data)
        if not isinstance(query, Query):
            return query
        if is_address_query(query):
            result = self._service.lookup_now(query.name, query.qtype)
            if isinstance(result, str):  # the servers must be asked
                return None
            reply = _address_reply(query, result)
            lifetime = min(REPLY_MEMO_LIFETIME, result.ttl)
        else:
            cached = self._service.forwarded_now(query)
            if cached is None:
                return None
            reply, lifetime = cached, 0.0  # forwarded answers are aged by dnslib: rare
        if udp:
            reply = fit_udp(query, reply)
        if lifetime > 0:
            if len(self.replies) >= REPLY_MEMO_SIZE:
                self.replies.clear()
            self.replies[memo_key] = (now + lifetime, reply[2:])
        return reply

    async def answer(self, data: bytes, *, udp: bool) -> bytes | None:
        """The reply to a client's message; None: send nothing (not even FORMERR)."""
        query = _prepare(data)
        if not isinstance(query, Query):
            return query
        if is_address_query(query):
            reply = _address_reply(query, await self._service.lookup(query.name, query.qtype))
        else:
            reply = await self._service.forward(query)
        return fit_udp(query, reply) if udp else reply


def _prepare(data: bytes) -> Query | bytes | None:
    """The parsed query, or the final reply to it (FORMERR), or None (drop)."""
    try:
        query = parse_query(data)
    except BadMessage as exc:
        log.debug("malformed query: %s", exc)
        return formerr_for(data)
    if is_address_query(query) and not is_address_name(query.name):
        return error_reply(query, FORMERR)  # v2ray: a name ToDomain refuses
    return query


def is_address_query(query: Query) -> bool:
    return query.qclass == CLASS_IN and query.qtype in (QTYPE_A, QTYPE_AAAA)


def _address_reply(query: Query, result: Resolution) -> bytes:
    return address_reply(query, result.addresses, max(0, math.ceil(result.ttl)), result.rcode)
