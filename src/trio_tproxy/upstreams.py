"""The one interface every outbound implements, whatever it is.

A stream-capable outbound (direct, socks, http, shadowsocks, trojan, a group, block,
dns) offers :meth:`StreamOutbound.open_stream`: given where the flow goes and the bytes
the client already sent, it returns an :data:`Upstream` that the session relays the
client over. A datagram-capable one offers :meth:`DatagramOutbound.open_udp`: a link
for one client source's datagrams (udp/session.py drives it). Nothing outside
``outbound/`` asks what class an outbound is; it asks for a capability.

Two kinds of upstream exist because the relay has two speeds: a :class:`SocketUpstream`
is a kernel socket carrying the client's bytes unchanged (direct, socks, http), which
the relay may move with splice(2); a :class:`StreamUpstream` is a :class:`ByteStream`
that transforms bytes (encryption, TLS, an in-process answerer such as the dns
outbound), relayed in userspace with the same timers and half-close semantics.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

import attrs

from .addr import Endpoint, IPAddress, SockAddr


@attrs.frozen
class Destination:
    """Where a flow goes: the original address and, when sniffing overrode it, the
    domain to dial instead (proxies send it by name, direct may resolve it)."""

    address: SockAddr
    domain: str | None = None

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def host(self) -> IPAddress | str:
        """What a proxy is asked for: the sniffed domain when there is one (the proxy
        resolves it), else the original IP."""
        return self.domain or self.address[0]


class FlowRefused(Exception):
    """The outbound declines the flow on purpose (block): ``response`` goes to the
    client, ``linger`` seconds later the connection closes; logged as ``outcome``."""

    def __init__(self, outcome: str, response: bytes = b"", linger: float = 0.0) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.response = response
        self.linger = linger


class ByteStream(Protocol):
    """An upstream byte stream with its own framing (ciphers, TLS, local answers).

    One that the relay engine can carry also has ``async engine_codec(client,
    count_up) -> relay_engine.Codec``: it may send what must go first (a request held
    back, with what the client has sent, counted). While the engine carries the flow
    the stream's own methods are not used; once the flow turns bulk they are again,
    by relay_stream.py's pumps, on the same cipher state."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send everything or raise OSError."""

    async def receive_some(self, max_bytes: int) -> bytes | bytearray | memoryview:
        """At least one byte, or empty at EOF; raise OSError on a broken stream. The
        bytes may be a view of the stream's own buffer (a cipher's output): valid
        until the next call, so use or copy them before calling again."""

    async def send_eof(self) -> None:
        """Half-close our sending side (no more data will be sent)."""

    def close(self, *, reset: bool = False) -> None:
        """Release the stream at once; ``reset``: abortively (RST). Idempotent."""


@attrs.define
class SocketUpstream:
    """A connected kernel socket whose bytes are the client's own."""

    sock: socket.socket
    early: bytes = b""  # what the upstream sent right behind its handshake: client first
    chain: tuple[str, ...] = ()  # the outbound that carries the flow, then the groups
    outcome: str | None = None  # replaces the access log's outcome if set


@attrs.define
class StreamUpstream:
    stream: ByteStream
    chain: tuple[str, ...] = ()
    outcome: str | None = None


class ClientStream(Protocol):
    """The client's side of a flow, as a local answerer sees it (a trio stream)."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...


@attrs.define
class LocalAnswer:
    """No upstream: the outbound answers the client itself (the dns outbound).

    ``serve(client, prefix, idle, count)`` runs until the client is done and returns
    the access-log outcome; ``count(up, down)`` adds bytes as they move."""

    serve: Callable[[ClientStream, bytes, float, Callable[[int, int], None]], Awaitable[str]]
    chain: tuple[str, ...] = ()


Upstream = SocketUpstream | StreamUpstream | LocalAnswer


@runtime_checkable
class StreamOutbound(Protocol):
    tag: str

    async def open_stream(
        self,
        destination: Destination,
        *,
        timeout: float,  # noqa: ASYNC109 - the handshake deadline, shared by every step
        initial: bytes = b"",
    ) -> Upstream:
        """Connect and negotiate within ``timeout``; ``initial`` (bytes the client sent
        while we sniffed) must reach the destination before anything else (an outbound
        may put it into its first write). Raise DialError if the upstream cannot be
        reached, FlowRefused to decline.

        An outbound that reaches no network (block, dns) says so with a true
        ``local_only`` attribute: DNS servers are never asked through it. One that
        sends from this host itself (direct) has ``direct_mark``: the DNS splitter then
        opens its own marked sockets, UDP included."""


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
class DatagramOutbound(Protocol):
    tag: str

    async def open_udp(self, request: UdpRequest) -> UdpLink:
        """Open a link for one client source; raise DialError if that is impossible."""


# isinstance() against a runtime-checkable Protocol inspects every member each time
# (about 5 % of a short flow's CPU): answered once per class instead.
_STREAMS: dict[type, bool] = {}
_DATAGRAMS: dict[type, bool] = {}


def stream_capable(outbound: object) -> StreamOutbound | None:
    kind = type(outbound)
    capable = _STREAMS.get(kind)
    if capable is None:
        capable = _STREAMS[kind] = isinstance(outbound, StreamOutbound)
    return outbound if capable else None  # type: ignore[return-value]


def datagram_capable(outbound: object) -> DatagramOutbound | None:
    kind = type(outbound)
    capable = _DATAGRAMS.get(kind)
    if capable is None:
        capable = _DATAGRAMS[kind] = isinstance(outbound, DatagramOutbound)
    return outbound if capable else None  # type: ignore[return-value]
