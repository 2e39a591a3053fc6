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
from ..udp import upstream as udp_upstream  # a module: udp/ imports outbound/ too
from .base import TcpFlow, UdpLink, UdpRequest
from .dial import open_tcp, open_tcp_happy
from .tunnel import carry

log = logging.getLogger("trio_tproxy.outbound.direct")

# Which address families each strategy may dial.
FAMILIES = {"use_ip": (4, 6), "use_ipv4": (4,), "use_ipv6": (6,)}


def wanted(ips: Sequence[IPAddress], strategy: str) -> list[IPAddress]:
    families = FAMILIES[strategy]
    return [ip for ip in ips if ip.version in families]


class DirectOutbound:
    def __init__(self, cfg: DirectConfig) -> None:
        self.tag: str = cfg.tag
        self.mark = cfg.mark
        self.domain_strategy = cfg.domain_strategy

    async def handle_tcp(self, flow: TcpFlow) -> None:
        upstream = await self.connect(flow)
        await carry(flow, upstream)

    async def connect(self, flow: TcpFlow) -> socket.socket:
        timeout = flow.ctx.handshake_timeout
        if self.domain_strategy != "as_is" and flow.domain is not None:
            ips = wanted(await flow.ctx.resolver.resolve(flow.domain), self.domain_strategy)
            if ips:
                port = flow.original_dst[1]
                return await open_tcp_happy(ips, port, mark=self.mark, timeout=timeout)
            log.debug(
                "%s: no %s address for %s; connecting to the original %s",
                self.tag, self.domain_strategy, flow.domain, flow.original_dst[0],
            )  # fmt: skip
        return await open_tcp(flow.original_dst, mark=self.mark, timeout=timeout)

    async def open_udp(self, request: UdpRequest) -> UdpLink:
        # Each datagram goes to its original destination, whatever domain_strategy says:
        # the client expects replies from the address it sent to, and a QUIC connection
        # is bound to it. One unconnected socket per client source: full cone.
        sock = udp_upstream.open_upstream(request.first_dst, self.mark)
        return udp_upstream.SocketLink(sock, request.buffer)
