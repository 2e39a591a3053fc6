"""What every outbound sees of a flow, and the interface outbounds implement."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import attrs

from ..addr import Endpoint, SockAddr
from ..relay import BufferPool, RelayStats, RelayTimeouts
from ..resolver import Resolver, SystemResolver


@attrs.frozen
class FlowContext:
    """Per-process settings an outbound needs to move a flow."""

    pool: BufferPool
    timeouts: RelayTimeouts
    handshake_timeout: float
    # Names outbounds resolve (direct use_ip*, a proxy given by name): the runtime's
    # resolver, so they follow the built-in DNS once it is configured.
    resolver: Resolver = attrs.field(factory=SystemResolver)


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


# UDP is optional for an outbound: the UDP session table (udp/session.py) asks
# ``udp_capable`` and refuses, with a log line, flows routed to one without it (http).
# socks (UDP ASSOCIATE) and dns plug in here through ``open_udp``.

DatagramSink = Callable[[memoryview, Endpoint], None]


@attrs.frozen
class UdpRequest:
    """What an outbound learns when a client source first needs it for UDP.

    One link serves one client source and every remote it reaches through this
    outbound, so the client keeps one mapped address towards all of them (full cone).
    """

    client: Endpoint  # the client's source address: the session's key
    first_dst: Endpoint  # the remote that opened the link (e.g. to pick a source address)
    # Receive buffer shared by every link: fill it and call ``deliver`` without an
    # await in between (the datagram is copied out before anyone else reads).
    buffer: bytearray
    handshake_timeout: float
    # Looks up a proxy given by name (socks): the runtime's resolver, like FlowContext's.
    resolver: Resolver = attrs.field(factory=SystemResolver)


class UdpLink(Protocol):
    """One client source's datagrams through one outbound."""

    # Replaces the access-log outcome of flows on this link ("blocked"), if set.
    outcome: str | None

    def send(self, payload: memoryview, dst: Endpoint, domain: str | None) -> str | None:
        """Send one datagram without waiting; None, or why it was dropped (no retry:
        it is UDP). ``domain``: the sniffed name overriding ``dst``, for proxies."""

    async def receive(self, deliver: DatagramSink) -> None:
        """Call ``deliver(payload, remote)`` per reply until closed or cancelled.

        ``remote`` is the address the client must see the reply from: a link that
        dialled a resolved address or a proxy maps it back to the ``dst`` it was given.
        Returning (or raising OSError) ends the link; its session may open another.
        """

    def close(self) -> None:
        """Release the link's sockets; idempotent."""


@runtime_checkable
class UdpOutbound(Protocol):
    tag: str

    async def open_udp(self, request: UdpRequest) -> UdpLink:
        """Open a link for one client source; raise DialError if that is impossible."""


def udp_capable(outbound: object) -> UdpOutbound | None:
    return outbound if isinstance(outbound, UdpOutbound) else None
