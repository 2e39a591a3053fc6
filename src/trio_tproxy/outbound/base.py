"""What every outbound sees of a flow, and the interface outbounds implement."""

from __future__ import annotations

import socket
from typing import Protocol

import attrs

from ..inbound.sockopt import SockAddr
from ..relay import BufferPool, RelayStats, RelayTimeouts


@attrs.frozen
class FlowContext:
    """Per-process settings an outbound needs to move a flow."""

    pool: BufferPool
    timeouts: RelayTimeouts
    handshake_timeout: float


@attrs.define
class TcpFlow:
    """One accepted client connection on its way out.

    ``prefix`` holds bytes already read from the client (while sniffing); an outbound
    must deliver them upstream before anything else, so nothing is lost or reordered.
    """

    client: socket.socket
    original_dst: SockAddr
    domain: str | None  # the sniffed domain that overrides the destination, if any
    prefix: bytes
    ctx: FlowContext
    stats: RelayStats = attrs.field(factory=RelayStats)


class Outbound(Protocol):
    tag: str

    async def handle_tcp(self, flow: TcpFlow) -> None:
        """Carry the flow until it ends; raise DialError if the upstream cannot be reached."""
