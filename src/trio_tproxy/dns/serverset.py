"""The configured DNS servers: where each one is, how its traffic leaves, and asking it.

Where a server's traffic goes follows v2ray (reference section 5, "routing of DNS
queries"): its ``outbound`` when set; otherwise the query is routed like a flow from
the inbound ``dns.tag`` to the server's address (UDP with protocol ``dns``; TCP, DoT
and DoH as TCP, the encrypted ones with protocol ``tls``), so ``inbound_tag = ["dns"]``
rules steer it. A server named by host name (DoT, DoH) is found by ``bootstrap``
(hosts, then the plain servers), never through itself.

Asking a server is bounded by its ``timeout``; any failure (timeout, refused, TLS, an
outbound that cannot carry DNS) is logged and reported as "no answer", which is what
makes the splitter move on to the next server.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence

import attrs
import trio

from ..addr import IPAddress, SockAddr
from ..config.checks import parse_dns_address
from ..config.errors import ConfigError, ConfigErrors
from ..config.schema import DnsServerConfig
from ..resolver import Resolver
from ..route import FlowFacts, Router
from .dialer import DialerUnavailable, DirectDialer, UpstreamDialer, UpstreamError, dialer_for
from .policy import ServerPlan
from .upstream import Endpoint, Route, Upstream, make_upstream

log = logging.getLogger("trio_tproxy.dns")

__all__ = ["Bootstrap", "Server", "ServerSet"]

Bootstrap = Callable[[str], Awaitable[IPAddress]]


@attrs.define
class Server:
    plan: ServerPlan
    endpoint: Endpoint
    timeout: float
    outbound: str | None
    upstream: Upstream | None = None
    route: tuple[IPAddress, UpstreamDialer] | None = None
    queries: int = 0  # exchanges attempted (tests and logs)


def _endpoint(server: DnsServerConfig) -> Endpoint:
    scheme, hostport, path = parse_dns_address(server.address)
    return Endpoint(scheme, hostport.host, hostport.port, path, server.tls_ca)  # type: ignore[arg-type]


class ServerSet:
    def __init__(
        self,
        configs: Sequence[DnsServerConfig],
        plans: Sequence[ServerPlan],
        *,
        tag: str,
        router: Router,
        outbounds: Mapping[str, object],
        resolver: Resolver,
        bootstrap: Bootstrap,
    ) -> None:
        """``resolver`` finds proxies given by name, ``bootstrap`` servers given by name.
        Raises ConfigErrors for a CA file that cannot be loaded."""
        self._tag = tag
        self._router = router
        self._outbounds = outbounds
        self._resolver = resolver
        self._bootstrap = bootstrap
        self._warned: set[int] = set()
        self.servers = [
            Server(plan, _endpoint(cfg), cfg.timeout.seconds, cfg.outbound)
            for plan, cfg in zip(plans, configs, strict=True)
        ]
        errors: list[ConfigError] = []
        for server in self.servers:
            try:
                server.upstream = make_upstream(server.endpoint, self._route_of(server))
            except (OSError, ValueError) as exc:  # tls_ca unreadable or not PEM
                path = f"$.dns.servers[{server.plan.index}].tls_ca"
                errors.append(ConfigError(f"cannot load CA file: {exc}", path))
        if errors:
            raise ConfigErrors(errors)

    def __len__(self) -> int:
        return len(self.servers)

    def __iter__(self) -> Iterator[Server]:
        return iter(self.servers)

    def __getitem__(self, index: int) -> Server:
        return self.servers[index]

    def _route_of(self, server: Server) -> Route:
        async def route() -> tuple[SockAddr, UpstreamDialer]:
            # A server named by host name is looked up each time (the cache answers);
            # one named by address is routed once per runtime.
            if server.route is None or server.endpoint.ip is None:
                server.route = await self._route(server)
            ip, dialer = server.route
            return (ip, server.endpoint.port), dialer

        return route

    async def _route(self, server: Server) -> tuple[IPAddress, UpstreamDialer]:
        endpoint = server.endpoint
        ip = endpoint.ip or await self._bootstrap(endpoint.host)
        tag = server.outbound
        if tag is None:  # v2ray: routed like a flow from the inbound `dns.tag`
            facts = FlowFacts(
                network="udp" if endpoint.scheme == "udp" else "tcp",
                dst_ip=ip, dst_port=endpoint.port,
                domain=None if endpoint.ip is not None else endpoint.host,
                inbound_tag=self._tag,
                protocol="tls" if endpoint.scheme in ("tls", "https") else "dns",
            )  # fmt: skip
            tag = getattr(self._router.decide(facts), "outbound", None)  # dst_ip: no NeedIps
        outbound = self._outbounds.get(tag) if tag is not None else None
        if outbound is None:
            raise DialerUnavailable(f"no outbound {tag!r}")
        return ip, dialer_for(outbound, self._resolver)

    async def routed_direct(self, server: Server) -> bool:
        """Do this server's queries leave from this host itself (a direct outbound)?"""
        try:
            if server.route is None or server.endpoint.ip is None:
                server.route = await self._route(server)
        except (DialerUnavailable, UpstreamError):
            return False
        return isinstance(server.route[1], DirectDialer)

    async def any_direct(self) -> bool:
        for server in self.servers:
            if await self.routed_direct(server):
                return True
        return False

    async def ask(self, server: Server, query: bytes) -> bytes | None:
        """The server's reply, or None (timeout or failure, logged)."""
        assert server.upstream is not None
        server.queries += 1
        with trio.move_on_after(server.timeout):
            try:
                return await server.upstream.exchange(query)
            except DialerUnavailable as exc:
                if server.plan.index not in self._warned:
                    self._warned.add(server.plan.index)
                    log.warning("DNS server %s is unusable: %s", server.endpoint, exc)
                return None
            except UpstreamError as exc:
                log.debug("DNS server %s failed: %s", server.endpoint, exc)
                return None
        log.debug("DNS server %s timed out after %gs", server.endpoint, server.timeout)
        return None
