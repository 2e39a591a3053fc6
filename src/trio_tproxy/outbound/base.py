"""What an outbound's flow carries, and the interface (re-exported from :mod:`..upstreams`)."""

from __future__ import annotations

import socket

import attrs

from ..addr import SockAddr
from ..relay import BufferPool, RelayStats, RelayTimeouts
from ..upstreams import (
    DatagramOutbound,
    DatagramSink,
    Destination,
    FlowRefused,
    LocalAnswer,
    SocketUpstream,
    StreamOutbound,
    StreamUpstream,
    UdpLink,
    UdpRequest,
    Upstream,
    datagram_capable,
    stream_capable,
)


@attrs.frozen
class FlowContext:
    """Per-process settings the session needs to move a flow."""

    pool: BufferPool
    timeouts: RelayTimeouts
    handshake_timeout: float


@attrs.define
class TcpFlow:
    """One accepted client connection on its way out.

    ``prefix`` holds bytes already read from the client (while sniffing); they reach
    the destination before anything else, so nothing is lost or reordered.
    """

    client: socket.socket
    original_dst: SockAddr
    domain: str | None  # the sniffed domain that overrides the destination, if any
    prefix: bytes
    ctx: FlowContext
    stats: RelayStats = attrs.field(factory=RelayStats)
    chain: tuple[str, ...] = ()  # who carried it: the outbound, then its groups

    @property
    def destination(self) -> Destination:
        return Destination(self.original_dst, self.domain)

    @property
    def up(self) -> int:
        return self.stats.up

    @property
    def down(self) -> int:
        return self.stats.down


__all__ = [
    "DatagramOutbound", "DatagramSink", "Destination", "FlowContext", "FlowRefused",
    "LocalAnswer", "SocketUpstream", "StreamOutbound", "StreamUpstream",
    "TcpFlow", "UdpLink", "UdpRequest", "Upstream", "datagram_capable",
    "stream_capable",
]  # fmt: skip
