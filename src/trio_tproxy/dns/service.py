"""The DNS splitter: hosts, cache, server selection and fallback, forwarding, reverse map.

One :class:`DnsService` per runtime answers three kinds of callers:

* the router's domain strategies and ``match --resolve``: :meth:`resolve` (the
  :class:`~trio_tproxy.resolver.Resolver` interface): A and AAAA per ``query_strategy``;
* the ``dns.listen`` listener and the ``dns`` outbound: :meth:`answer_now` and
  :meth:`answer` take a client's message and return the reply (:mod:`.answer`), other
  types forwarded (:meth:`forward`) to the server the splitter would choose;
* sessions: :attr:`reverse`, the address -> domain map filled from answers.

A reload builds a new service; :meth:`adopt` carries over the reverse map and the cached
answers the new configuration would still get from the same server (see there).

Server walk (reference section 5): servers in :func:`~.policy.select_servers` order,
each under its own timeout; the next one is asked only when this one gave no answer
(timeout, connection or TLS failure, a malformed answer) or every address it gave is
outside its ``expect_ips``. An answer with an RCODE, or with no records, is final.
No servers configured means v2ray's implicit ``localhost``: the system resolver.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import secrets
import socket
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

import attrs
import trio

from ..addr import IPAddress
from ..config.schema import Config, DnsServerConfig
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
from .serverset import Server, ServerSet

log = logging.getLogger("trio_tproxy.dns")

__all__ = ["DnsService", "Resolution"]

# TTL of answers made from ``hosts`` and of "not this family" answers: short, so an
# edited hosts table reaches clients soon after a reload.
LOCAL_TTL = 60
# The system resolver (no servers configured) says nothing about TTLs.
SYSTEM_TTL = 60


_Key = tuple[str | int | bool, ...]
# Who gave an answer: the server as configured and, when it names one, its outbound as
# configured (the same server reached another way may answer otherwise: geo-DNS).
_Origin = tuple[DnsServerConfig, object]


def _origins(cfg: Config) -> tuple[_Origin, ...]:
    def outbound(tag: str | None) -> object:
        try:
            return cfg.outbound(tag) if tag is not None else None
        except KeyError:  # the config checks refuse an unknown tag; nothing to compare
            return None

    return tuple((server, outbound(server.outbound)) for server in cfg.dns.servers)


@attrs.frozen
class _Forwarded:
    at: float  # when it was stored: TTLs are aged by the time since
    reply: bytes
    origin: _Origin | None = None  # the server that answered (None: the system's)


@attrs.frozen
class _Resolved:
    resolution: Resolution
    origin: _Origin | None  # the server that answered (None: the system resolver)


_T = TypeVar("_T")


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
        self._configs = _origins(cfg)
        self.cache: TtlCache[_Key, _Resolved | _Forwarded] = TtlCache(
            size, dns.min_ttl.seconds, dns.max_ttl.seconds
        )
        self.inflight: Inflight[_Key, Resolution | bytes | None] = Inflight()
        self.reverse: ReverseMap | None = ReverseMap() if dns.reverse_mapping else None
        self.clients = ClientAnswers(self)
        self.direct = DirectNames(self)
        self.stats = DnsStats()

    @property
    def uses_system_resolver(self) -> bool:
        return not self.servers

    # -- the Resolver interface ------------------------------------------------------

    async def resolve(self, domain: str, *, direct_only: bool = False) -> Sequence[IPAddress]:
        """Addresses of ``domain`` for routing: A and/or AAAA per query_strategy.

        ``direct_only``: ask only servers whose queries leave directly (a proxy's own
        server name must never be looked up through that proxy); the system resolver
        when none does."""
        name = normalize_domain(domain)
        found: dict[int, tuple[IPAddress, ...]] = {}

        async def one(qtype: int) -> None:
            found[qtype] = (await self.lookup(name, qtype, direct_only=direct_only)).addresses

        async with trio.open_nursery() as nursery:
            for qtype in self._qtypes:
                nursery.start_soon(one, qtype)
        return tuple(dict.fromkeys(ip for qtype in self._qtypes for ip in found[qtype]))

    # -- A/AAAA through the splitter ----------------------------------------------------

    async def lookup(self, name: str, qtype: int, *, direct_only: bool = False) -> Resolution:
        found = self.lookup_now(name, qtype)
        if isinstance(found, Resolution):
            return found
        # Its own key: a direct-only lookup must never wait for one that goes through
        # the very proxy asking for it.
        key = ("ip-direct" if direct_only else "ip", found, qtype)
        result = await self.inflight.run(
            key, lambda: self._fetch(found, qtype, direct_only=direct_only)
        )
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
            if hit is None or not isinstance(hit[0], _Resolved):
                self.stats.cache_misses += 1
                return hosts.name
            self.stats.cache_hits += 1
            result = attrs.evolve(hit[0].resolution, ttl=hit[1])
        self._learn(name, result)
        return result

    def _learn(self, name: str, result: Resolution) -> None:
        if result.addresses and self.reverse is not None:
            self.reverse.learn(name, result.addresses)

    async def _fetch(self, name: str, qtype: int, *, bootstrap: bool = False,
                     direct_only: bool = False) -> Resolution:  # fmt: skip
        result, origin = await self._ask_addresses(name, qtype, bootstrap=bootstrap,
                                                   direct_only=direct_only)  # fmt: skip
        if result.rcode in (NOERROR, NXDOMAIN):
            negative = not result.addresses
            stored = self.cache.put(("ip", name, qtype), _Resolved(result, origin), result.ttl,
                                    trio.current_time(), negative=negative)  # fmt: skip
            result = attrs.evolve(result, ttl=stored or self.cache.ttl_for(result.ttl))
        return result

    async def _walk(
        self,
        name: str,
        query: Callable[[int], bytes],
        judge: Callable[[Server, bytes, int], _T | None],
        *,
        bootstrap: bool = False,
        direct_only: bool = False,
    ) -> _T | None:
        """Ask the servers for ``name`` in splitter order until ``judge`` accepts a reply.

        ``query(qid)`` is the message to send; ``judge(server, reply, qid)`` returns the
        result, or None to ask the next server, or raises BadMessage (logged; the next).
        """
        for index in select_servers(name, self.plans, disable_fallback=self._disable_fallback):
            server = self.servers[index]
            if bootstrap and server.endpoint.scheme in ("tls", "https"):
                continue  # resolving a server's own name must not need another such server
            if direct_only and not await self.servers.routed_direct(server):
                continue
            qid = secrets.randbits(16)
            self.stats.queries[str(server.endpoint)] += 1
            reply = await self.servers.ask(server, query(qid))
            if reply is None:
                continue
            try:
                result = judge(server, reply, qid)
            except BadMessage as exc:
                log.debug("%s: bad answer for %s: %s", server.endpoint, name, exc)
                continue
            if result is not None:
                return result
        return None

    async def _ask_addresses(self, name: str, qtype: int, *, bootstrap: bool,
                             direct_only: bool = False,
                             ) -> tuple[Resolution, _Origin | None]:  # fmt: skip
        """The answer and the server that gave it (None: the system resolver)."""
        if not self.servers or (direct_only and not await self.servers.any_direct()):
            return await self._system(name, qtype), None

        def judge(server: Server, reply: bytes, qid: int
                  ) -> tuple[Resolution, _Origin | None] | None:  # fmt: skip
            answer = parse_answer(reply, qid, name, qtype)
            if answer.truncated:
                log.debug("%s: truncated answer for %s even over TCP", server.endpoint, name)
                return None
            origin = self._configs[server.plan.index]
            if answer.rcode != NOERROR or not answer.addresses:
                return Resolution(answer.rcode, (), answer.ttl), origin
            kept = filter_expected(answer.addresses, server.plan.expect_ips)
            if kept:
                return Resolution(NOERROR, kept, answer.ttl), origin
            log.debug("%s: %s %s answers outside expect_ips: %s", server.endpoint, name,
                      qtype_name(qtype), ", ".join(map(str, answer.addresses)))  # fmt: skip
            return None

        query = functools.partial(build_query, name, qtype)
        result = await self._walk(name, query, judge, bootstrap=bootstrap,
                                  direct_only=direct_only)  # fmt: skip
        return (Resolution(SERVFAIL, (), 0), None) if result is None else result

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

    # -- across a reload ----------------------------------------------------------------

    def adopt(self, previous: DnsService) -> None:
        """Keep what ``previous`` (the service of the configuration being replaced) learnt
        and this configuration does not invalidate: the address -> domain map (facts
        about what clients resolved, whatever the config), and each cached answer whose
        server is still configured alike and would still be asked for the name after
        the same servers as before; the answers of servers removed or changed (address,
        domains, expect_ips, their outbound or its settings...) or now preceded by another
        are dropped."""
        if self.reverse is not None and previous.reverse is not None:
            self.reverse = previous.reverse
        alike = (previous._configs == self._configs
                 and previous._disable_fallback == self._disable_fallback)  # fmt: skip
        verdicts: dict[tuple[str, _Origin | None], bool] = {}

        def still_holds(key: _Key, entry: _Resolved | _Forwarded) -> bool:
            if alike:
                return True
            found = (str(key[1]), entry.origin)
            if found not in verdicts:
                verdicts[found] = self._asked_alike(previous, *found)
            return verdicts[found]

        kept = self.cache.carry_over(previous.cache, still_holds, trio.current_time())
        log.info("dns: kept %d of %d cached answer(s) and %d reverse-mapped address(es)",
                 kept, len(previous.cache), len(self.reverse or ()))  # fmt: skip

    def _asked_alike(
        self, previous: DnsService, name: str, origin: _Origin | None
    ) -> bool:
        """Whether this configuration walks to ``origin`` for ``name`` past the same
        servers as ``previous`` did (None: both ask the system resolver)."""
        if origin is None:
            return not self._configs and not previous._configs
        before = [previous._configs[i] for i in select_servers(
            name, previous.plans, disable_fallback=previous._disable_fallback)]  # fmt: skip
        now = [self._configs[i] for i in select_servers(
            name, self.plans, disable_fallback=self._disable_fallback)]  # fmt: skip
        if origin not in before:
            return False
        upto = before.index(origin) + 1
        return now[:upto] == before[:upto]

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

        def judge(server: Server, reply: bytes, qid: int) -> bytes:
            check_forwarded(reply, qid, query)
            ttl = forwarded_ttl(reply)
            rcode = reply[3] & 0x0F
            if rcode in (NOERROR, NXDOMAIN):
                negative = int.from_bytes(reply[6:8], "big") == 0
                now = trio.current_time()
                origin = self._configs[server.plan.index]
                self.cache.put(key, _Forwarded(now, reply, origin), ttl, now, negative=negative)
            return reply

        return await self._walk(query.name, functools.partial(with_id, query.raw), judge)


def _forward_key(query: Query) -> _Key:
    # The DO bit changes the answer (signatures); the class is part of the question.
    return ("raw", query.name, query.qtype, query.qclass, query.dnssec_ok)


class DirectNames:
    """The resolver of upstream proxies' own server names: hosts, then the servers whose
    queries leave directly (the system resolver when none does), never a server reached
    through a proxy - least of all the one whose name is being looked up."""

    def __init__(self, service: DnsService) -> None:
        self._service = service

    async def resolve(self, domain: str) -> Sequence[IPAddress]:
        return await self._service.resolve(domain, direct_only=True)
