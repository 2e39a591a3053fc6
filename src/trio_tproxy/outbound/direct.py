"""The ``direct`` outbound: connect to the original destination, marked."""

from __future__ import annotations

from ..config import DirectOutbound as DirectConfig
from ..relay import relay, send_all
from .base import TcpFlow
from .dial import close_socket, open_tcp


class DirectOutbound:
    def __init__(self, cfg: DirectConfig) -> None:
        self.tag: str = cfg.tag
        self.mark = cfg.mark
        self.domain_strategy = cfg.domain_strategy

    async def handle_tcp(self, flow: TcpFlow) -> None:
        # as_is: the original IP, never the system resolver (a gateway must not leak DNS).
        # use_ip*: resolution of flow.domain through the built-in DNS arrives with it.
        upstream = await open_tcp(
            flow.original_dst, mark=self.mark, timeout=flow.ctx.handshake_timeout
        )
        try:
            if flow.prefix:
                await send_all(upstream, flow.prefix)
                flow.stats.up += len(flow.prefix)
            await relay(flow.client, upstream, flow.ctx.timeouts, flow.ctx.pool, stats=flow.stats)
        finally:
            close_socket(upstream)
