"""The ``direct`` outbound: connect to the destination, marked.

``domain_strategy`` (v2ray's freedom, reference §4): ``as_is`` connects to the original
IP and never asks any resolver (a gateway must not leak DNS, and the client already
chose that address). ``use_ip`` / ``use_ipv4`` / ``use_ipv6`` resolve a sniffed domain
through the runtime's resolver (the built-in DNS once configured), keep the wanted
family and race the addresses with Happy Eyeballs. When the domain has no address of
that family, the flow falls back to the original IP: v2ray falls back to dialing the
name through the system resolver, which is exactly the leak a gateway must avoid.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Sequence

from ..addr import IPAddress
from ..config import DirectOutbound as DirectConfig
from ..dial import open_tcp, open_tcp_happy
from ..resolver import Resolver, SystemResolver
from . import udp_socket as udp_upstream
from .base import Destination, SocketUpstream, UdpLink, UdpRequest
from .tunnel import socket_upstream

log = logging.getLogger("trio_tproxy.outbound.direct")

# Which address families each strategy may dial.
FAMILIES = {"use_ip": (4, 6), "use_ipv4": (4,), "use_ipv6": (6,)}


def wanted(ips: Sequence[IPAddress], strategy: str) -> list[IPAddress]:
    families = FAMILIES[strategy]
    return [ip for ip in ips if ip.version in families]


class DirectOutbound:
    def __init__(self, cfg: DirectConfig, resolver: Resolver | None = None) -> None:
        self.tag: str = cfg.tag
        self.mark = cfg.mark
        # Capability, for DNS servers routed here: plain sockets from this host, marked.
        self.direct_mark: int = cfg.mark
        self.domain_strategy = cfg.domain_strategy
        self.resolver: Resolver = resolver or SystemResolver()

    async def open_stream(
        self,
        destination: Destination,
        *,
        timeout: float,  # noqa: ASYNC109
        initial: bytes = b"",
    ) -> SocketUpstream:
        sock = await self.connect(destination, timeout=timeout)
        return await socket_upstream(sock, initial, chain=(self.tag,))

    async def connect(self, destination: Destination, *, timeout: float) -> socket.socket:  # noqa: ASYNC109
        if self.domain_strategy != "as_is" and destination.domain is not None:
            ips = wanted(await self.resolver.resolve(destination.domain), self.domain_strategy)
            if ips:
                port = destination.port
                return await open_tcp_happy(ips, port, mark=self.mark, timeout=timeout)
            log.debug(
                "%s: no %s address for %s; connecting to the original %s",
                self.tag, self.domain_strategy, destination.domain, destination.address[0],
            )  # fmt: skip
        return await open_tcp(destination.address, mark=self.mark, timeout=timeout)

    async def open_udp(self, request: UdpRequest) -> UdpLink:
        # Each datagram goes to its original destination, whatever domain_strategy says:
        # the client expects replies from the address it sent to, and a QUIC connection
        # is bound to it. One unconnected socket per client source: full cone.
        sock = udp_upstream.open_upstream(request.first_dst, self.mark)
        return udp_upstream.SocketLink(sock, request.buffer)
