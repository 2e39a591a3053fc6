"""The DNS splitter: hosts, cache, server selection and fallback, forwarding, reverse map.

One :class:`DnsService` per runtime answers three kinds of callers:

* the router's domain strategies and ``match --resolve``: :meth:`resolve` (the
  :class:`~trio_tproxy.resolver.Resolver` interface): A and AAAA per ``query_strategy``;
* the ``dns.listen`` listener and the ``dns`` outbound: :meth:`answer_now` and
  :meth:`answer` take a client's message and return the reply (:mod:`.answer`), other
  types forwarded (:meth:`forward`) to the server the splitter would choose;
* sessions: :attr:`reverse`, the address -> domain map filled from answers.

Server walk (reference section 5): servers in :func:`~.policy.select_servers` order,
each under its own timeout; the next one is asked only when this one gave no answer
(timeout, connection or TLS failure, a malformed answer) or every address it gave is
outside its ``expect_ips``. An answer with an RCODE, or with no records, is final.
No servers configured means v2ray's implicit ``localhost``: the system resolver.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket
from collections import Counter
from collections.abc import Mapping, Sequence

import attrs
import trio

from ..addr import IPAddress
from ..config.schema import Config
from ..geo import GeoData
from ..route import Router, normalize_domain
from .answer import ClientAnswers, Resolution
from .cache import Inflight, TtlCache
from .dialer import UpstreamError
from .exchange import age_ttls, build_query, check_forwarded, forwarded_ttl, parse_answer
from .message import (
    NOERROR,
    NXDOMAIN,
    QTYPE_A,
    QTYPE_AAAA,
    SERVFAIL,
    BadMessage,
    Query,
    error_reply,
    qtype_name,
    with_id,
)
from .policy import (
    HostsTable,
    build_hosts,
    compile_servers,
    filter_expected,
    query_types,
    select_servers,
)
from .reverse import ReverseMap
from .serverset import ServerSet

log = logging.getLogger("trio_tproxy.dns")

__all__ = ["DnsService", "Resolution"]

# TTL of answers made from ``hosts`` and of "not this family" answers: short, so an
# edited hosts table reaches clients soon after a reload.
LOCAL_TTL = 60
# The system resolver (no servers configured) says nothing about TTLs.
SYSTEM_TTL = 60


@attrs.frozen
class _Forwarded:
    at: float  # when it was stored: TTLs are aged by the time since
    reply: bytes


_Key = tuple[str | int | bool, ...]


@attrs.define
class DnsStats:
    """Counted for /metrics: queries sent, by server; cache lookups that hit or missed."""

    queries: Counter[str] = attrs.field(factory=Counter)
    cache_hits: int = 0
    cache_misses: int = 0


class DnsService:
    def __init__(
        self,
        cfg: Config,
        geo: GeoData,
        router: Router,
        outbounds: Mapping[str, object],
    ) -> None:
        dns = cfg.dns
        self._disable_fallback = dns.disable_fallback
        self._qtypes = query_types(dns.query_strategy)
        self.hosts: HostsTable = build_hosts(dns.hosts, geo)
        self.plans = compile_servers(dns, geo)
        self.servers = ServerSet(
            dns.servers, self.plans, tag=dns.tag, router=router, outbounds=outbounds,
            resolver=self, bootstrap=self._bootstrap,
        )  # fmt: skip
        size = dns.cache_size if dns.cache else 0
        self.cache: TtlCache[_Key, Resolution | _Forwarded] = TtlCache(
            size, dns.min_ttl.seconds, dns.max_ttl.seconds
        )
        self.inflight: Inflight[_Key, Resolution | bytes | None] = Inflight()
        self.reverse: ReverseMap | None = ReverseMap() if dns.reverse_mapping else None
        self.clients = ClientAnswers(self)
        self.stats = DnsStats()

    @property
    def uses_system_resolver(self) -> bool:
        return not self.servers

    # -- the Resolver interface ------------------------------------------------------

    async def resolve(self, domain: str) -> Sequence[IPAddress]:
        """Addresses of ``domain`` for routing: A and/or AAAA per query_strategy."""
        name = normalize_domain(domain)
        found: dict[int, tuple[IPAddress, ...]] = {}

        async def one(qtype: int) -> None:
            found[qtype] = (await self.lookup(name, qtype)).addresses

        async with trio.open_nursery() as nursery:
            for qtype in self._qtypes:
                nursery.start_soon(one, qtype)
        return tuple(dict.fromkeys(ip for qtype in self._qtypes for ip in found[qtype]))

    # -- A/AAAA through the splitter ----------------------------------------------------

    async def lookup(self, name: str, qtype: int) -> Resolution:
        found = self.lookup_now(name, qtype)
        if isinstance(found, Resolution):
            return found
        result = await self.inflight.run(("ip", found, qtype), lambda: self._fetch(found, qtype))
        assert isinstance(result, Resolution)
        self._learn(name, result)
        return result

    def lookup_now(self, name: str, qtype: int) -> Resolution | str:
        """An answer from hosts, query_strategy or the cache; else the name (after hosts
        aliases) to ask the servers about."""
        hosts = self.hosts.lookup(name, qtype)
        if hosts.addresses is not None:
            result = Resolution(NOERROR, hosts.addresses, LOCAL_TTL)
        elif qtype not in self._qtypes:
            result = Resolution(NOERROR, (), LOCAL_TTL)  # query_strategy: not this family
        else:
            hit = self.cache.get(("ip", hosts.name, qtype), trio.current_time())
            if hit is None or not isinstance(hit[0], Resolution):
                self.stats.cache_misses += 1
                return hosts.name
            self.stats.cache_hits += 1
            result = attrs.evolve(hit[0], ttl=hit[1])
        self._learn(name, result)
        return result

    def _learn(self, name: str, result: Resolution) -> None:
        if result.addresses and self.reverse is not None:
            self.reverse.learn(name, result.addresses)

    async def _fetch(self, name: str, qtype: int, *, bootstrap: bool = False) -> Resolution:
        result = await self._walk(name, qtype, bootstrap=bootstrap)
        if result.rcode in (NOERROR, NXDOMAIN):
            negative = not result.addresses
            stored = self.cache.put(
                ("ip", name, qtype), result, result.ttl, trio.current_time(), negative=negative
            )
            result = attrs.evolve(result, ttl=stored or self.cache.ttl_for(result.ttl))
        return result

    async def _walk(self, name: str, qtype: int, *, bootstrap: bool) -> Resolution:
        if not self.servers:
            return await self._system(name, qtype)
        for index in select_servers(name, self.plans, disable_fallback=self._disable_fallback):
            server = self.servers[index]
            if bootstrap and server.endpoint.scheme in ("tls", "https"):
                continue  # resolving a server's own name must not need another such server
            qid = secrets.randbits(16)
            self.stats.queries[str(server.endpoint)] += 1
            reply = await self.servers.ask(server, build_query(name, qtype, qid))
            if reply is None:
                continue
            try:
                answer = parse_answer(reply, qid, name, qtype)
            except BadMessage as exc:
                log.debug("%s: bad answer for %s: %s", server.endpoint, name, exc)
                continue
            if answer.truncated:
                log.debug("%s: truncated answer for %s even over TCP", server.endpoint, name)
                continue
            if answer.rcode != NOERROR or not answer.addresses:
                return Resolution(answer.rcode, (), answer.ttl)
            kept = filter_expected(answer.addresses, server.plan.expect_ips)
            if kept:
                return Resolution(NOERROR, kept, answer.ttl)
            log.debug("%s: %s %s answers outside expect_ips: %s", server.endpoint, name,
                      qtype_name(qtype), ", ".join(map(str, answer.addresses)))  # fmt: skip
        return Resolution(SERVFAIL, (), 0)

    async def _system(self, name: str, qtype: int) -> Resolution:
        family = socket.AF_INET if qtype == QTYPE_A else socket.AF_INET6
        with trio.move_on_after(4.0):
            try:
                infos = await trio.socket.getaddrinfo(name, None, family, socket.SOCK_STREAM)
            except socket.gaierror as exc:
                rcode = NXDOMAIN if exc.errno == socket.EAI_NONAME else SERVFAIL
                return Resolution(rcode, (), SYSTEM_TTL)
            except (OSError, UnicodeError):
                return Resolution(SERVFAIL, (), 0)
            ips = (ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos)
            return Resolution(NOERROR, tuple(dict.fromkeys(ips)), SYSTEM_TTL)
        return Resolution(SERVFAIL, (), 0)

    async def _bootstrap(self, host: str) -> IPAddress:
        name = normalize_domain(host)
        for qtype in (QTYPE_A, QTYPE_AAAA):
            hosts = self.hosts.lookup(name, qtype)
            if hosts.addresses:
                return hosts.addresses[0]
            result = await self._fetch(hosts.name, qtype, bootstrap=True)
            if result.addresses:
                return result.addresses[0]
        raise UpstreamError(f"cannot resolve the server name {host!r} (put it in dns.hosts)")

    # -- client messages (see .answer) -----------------------------------------------

    def answer_now(self, data: bytes, *, udp: bool) -> bytes | None:
        return self.clients.answer_now(data, udp=udp)

    async def answer(self, data: bytes, *, udp: bool) -> bytes | None:
        return await self.clients.answer(data, udp=udp)

    # -- other types, forwarded --------------------------------------------------------

    def forwarded_now(self, query: Query) -> bytes | None:
        """A cached answer to a forwarded query (TTLs aged), or None."""
        key = _forward_key(query)
        now = trio.current_time()
        hit = self.cache.get(key, now)
        if hit is None or not isinstance(hit[0], _Forwarded):
            self.stats.cache_misses += 1
            return None
        self.stats.cache_hits += 1
        stored = hit[0]
        return with_id(age_ttls(stored.reply, int(now - stored.at)), query.id)

    async def forward(self, query: Query) -> bytes:
        """Other types: the raw query to the server the splitter would choose."""
        cached = self.forwarded_now(query)
        if cached is not None:
            return cached
        key = _forward_key(query)
        raw = await self.inflight.run(key, lambda: self._forward_fetch(query, key))
        if not isinstance(raw, bytes):
            return error_reply(query, SERVFAIL)
        return with_id(raw, query.id)

    async def _forward_fetch(self, query: Query, key: _Key) -> bytes | None:
        if not self.servers:
            return None  # the system resolver answers addresses only
        for index in select_servers(query.name, self.plans,
                                    disable_fallback=self._disable_fallback):  # fmt: skip
            server = self.servers[index]
            qid = secrets.randbits(16)
            self.stats.queries[str(server.endpoint)] += 1
            reply = await self.servers.ask(server, with_id(query.raw, qid))
            if reply is None:
                continue
            try:
                check_forwarded(reply, qid, query)
                ttl = forwarded_ttl(reply)
            except BadMessage as exc:
                log.debug("%s: bad answer for %s: %s", server.endpoint, query.name, exc)
                continue
            rcode = reply[3] & 0x0F
            if rcode in (NOERROR, NXDOMAIN):
                negative = int.from_bytes(reply[6:8], "big") == 0
                now = trio.current_time()
                self.cache.put(key, _Forwarded(now, reply), ttl, now, negative=negative)
            return reply
        return None


def _forward_key(query: Query) -> _Key:
    # The DO bit changes the answer (signatures); the class is part of the question.
    return ("raw", query.name, query.qtype, query.qclass, query.dnssec_ok)
