"""What an outbound's flow carries, and the interface (re-exported from :mod:`.interface`)."""

from __future__ import annotations

import socket

import attrs

from ..addr import SockAddr
from ..relay import BufferPool, RelayStats, RelayTimeouts
from ..resolver import Resolver, SystemResolver
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

# Every outbound offers open_stream; the registry's values have this type.
Outbound = StreamOutbound
UdpOutbound = DatagramOutbound
udp_capable = datagram_capable


@attrs.frozen
class FlowContext:
    """Per-process settings the session needs to move a flow."""

    pool: BufferPool
    timeouts: RelayTimeouts
    handshake_timeout: float
    # Names outbounds resolve (direct use_ip*, a proxy given by name): the runtime's
    # resolver, so they follow the built-in DNS once it is configured.
    resolver: Resolver = attrs.field(factory=SystemResolver)


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
    chain: tuple[str, ...] = ()  # the upstream's chain once one carries the flow (the API's)

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
    "LocalAnswer", "Outbound", "SocketUpstream", "StreamOutbound", "StreamUpstream",
    "TcpFlow", "UdpLink", "UdpOutbound", "UdpRequest", "Upstream", "datagram_capable",
    "stream_capable", "udp_capable",
]  # fmt: skip
