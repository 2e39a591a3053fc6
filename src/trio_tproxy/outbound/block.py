"""The ``block`` outbound (v2ray's blackhole)."""

from __future__ import annotations

import trio

from ..config import BlockOutbound as BlockConfig
from ..relay import send_all
from .base import TcpFlow

# Byte for byte what v2ray and Xray send (LF line ends, not CRLF): reference section 4.
HTTP_403 = (
    b"HTTP/1.1 403 Forbidden\nConnection: close\nCache-Control: max-age=3600, public\n"
    b"Content-Length: 0\n\n\n"
)
# v2ray sleeps 1 s after the 403 so the client reads it before the close.
HTTP_LINGER = 1.0


class BlockOutbound:
    def __init__(self, cfg: BlockConfig) -> None:
        self.tag: str = cfg.tag
        self.response = cfg.response

    async def handle_tcp(self, flow: TcpFlow) -> None:
        flow.stats.outcome = "blocked"
        if self.response == "http":
            try:
                await send_all(flow.client, HTTP_403)
            except OSError:
                return
            flow.stats.down += len(HTTP_403)
            await trio.sleep(HTTP_LINGER)
