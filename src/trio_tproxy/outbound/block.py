"""The ``block`` outbound (v2ray's blackhole)."""

from __future__ import annotations

import trio

from ..addr import Endpoint
from ..config import BlockOutbound as BlockConfig
from .base import DatagramSink, Destination, FlowRefused, UdpLink, UdpRequest, Upstream

# Byte for byte what v2ray and Xray send (LF line ends, not CRLF): reference section 4.
HTTP_403 = (
    b"HTTP/1.1 403 Forbidden\nConnection: close\nCache-Control: max-age=3600, public\n"
    b"Content-Length: 0\n\n\n"
)
# v2ray sleeps 1 s after the 403 so the client reads it before the close.
HTTP_LINGER = 1.0


class BlockOutbound:
    def __init__(self, cfg: BlockConfig, resolver: object = None) -> None:
        self.tag: str = cfg.tag
        self.response = cfg.response
        self.local_only = True  # reaches nothing: DNS servers cannot be asked through it

    async def open_stream(
        self,
        destination: Destination,
        *,
        timeout: float,  # noqa: ASYNC109
        initial: bytes = b"",
    ) -> Upstream:
        await trio.lowlevel.checkpoint()
        if self.response == "http":
            raise FlowRefused("blocked", HTTP_403, HTTP_LINGER)
        raise FlowRefused("blocked")

    async def open_udp(self, request: UdpRequest) -> UdpLink:
        return DiscardLink()


class DiscardLink:
    """UDP to a blocked destination: every datagram accepted and dropped, no socket."""

    outcome: str | None = "blocked"

    def send(self, payload: memoryview, dst: Endpoint, domain: str | None) -> str | None:
        return None

    async def receive(self, deliver: DatagramSink) -> None:
        await trio.sleep_forever()  # returning would end the link and re-route the flow

    def close(self) -> None:
        pass
