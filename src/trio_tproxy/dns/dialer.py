"""How the splitter's sockets reach a DNS server: through the outbound the server names.

Every upstream socket carries its outbound's mark (SO_MARK), so a gateway's diversion
rules let it out instead of sending it back into the proxy. ``direct`` dials the server
itself; ``socks`` and ``http`` carry a TCP connection to the server through their
proxy (CONNECT), over which plain-UDP servers are asked too (RFC 7766: every DNS server
answers over TCP).
"""

from __future__ import annotations

import errno
import socket
from typing import Protocol

import trio

from ..addr import SockAddr
from ..dial import DialError, open_tcp
from ..inbound.sockopt import SocketSetupError, set_mark
from ..resolver import Resolver
from ..sock import addr_to_sockaddr, close_socket, family_of
from ..upstreams import (
    ByteStream,
    Destination,
    FlowRefused,
    SocketUpstream,
    StreamOutbound,
    StreamUpstream,
    stream_capable,
)

__all__ = [
    "DatagramEndpoint", "DialerUnavailable", "DirectDialer", "UpstreamDialer",
    "UpstreamError", "dialer_for",
]  # fmt: skip


class UpstreamError(Exception):
    """A DNS server could not be asked (connect, TLS, I/O); ``str()`` says why."""


class DialerUnavailable(UpstreamError):
    """The outbound a DNS server is routed to cannot carry DNS queries."""


class DatagramEndpoint(Protocol):
    async def send(self, data: bytes) -> None: ...

    async def receive(self) -> bytes: ...

    def close(self) -> None: ...


class UpstreamDialer(Protocol):
    label: str  # "direct" or the outbound's tag, for logs

    async def open_stream(self, addr: SockAddr, timeout: float) -> trio.abc.Stream: ...  # noqa: ASYNC109

    async def open_datagram(self, addr: SockAddr) -> DatagramEndpoint | None:
        """A UDP endpoint towards ``addr``, or None: ask this server over TCP."""


class _UdpSocket:
    def __init__(self, sock: trio.socket.SocketType) -> None:
        self._sock = sock

    async def send(self, data: bytes) -> None:
        try:
            await self._sock.send(data)
        except OSError as exc:
            raise UpstreamError(f"send failed: {exc.strerror or exc}") from exc

    async def receive(self) -> bytes:
        try:
            return await self._sock.recv(65535)
        except OSError as exc:  # ICMP unreachable arrives as ECONNREFUSED on a connected socket
            raise UpstreamError(f"receive failed: {exc.strerror or exc}") from exc

    def close(self) -> None:
        self._sock.close()


class DirectDialer:
    """Sockets of our own, marked like the ``direct`` outbound's."""

    def __init__(self, mark: int, label: str = "direct") -> None:
        self.mark = mark
        self.label = label

    async def open_stream(self, addr: SockAddr, timeout: float) -> trio.abc.Stream:  # noqa: ASYNC109
        try:
            sock = await open_tcp(addr, mark=self.mark, timeout=timeout)
        except DialError as exc:
            raise UpstreamError(str(exc)) from exc
        except OSError as exc:  # SO_MARK refused, no route
            raise UpstreamError(f"connect failed: {exc.strerror or exc}") from exc
        try:
            return trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        except BaseException:
            close_socket(sock)
            raise

    async def open_datagram(self, addr: SockAddr) -> DatagramEndpoint:
        family = family_of(addr[0])
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            set_mark(sock, self.mark)
            sock.setblocking(False)
            sock.connect(addr_to_sockaddr(addr, family))
        except SocketSetupError as exc:
            sock.close()
            raise UpstreamError(str(exc.strerror or exc)) from exc
        except OSError as exc:
            sock.close()
            reason = "no route" if exc.errno == errno.ENETUNREACH else (exc.strerror or str(exc))
            raise UpstreamError(f"UDP socket towards the server: {reason}") from exc
        await trio.lowlevel.checkpoint()
        return _UdpSocket(trio.socket.from_stdlib_socket(sock))


class _UpstreamStream(trio.abc.Stream):
    """An outbound's transforming ByteStream as the trio Stream the DNS exchanges use
    (TCP DNS, and TLS on top of it for DoT/DoH)."""

    def __init__(self, stream: ByteStream) -> None:
        self._stream = stream

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self._stream.send_all(data)
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        try:
            data = await self._stream.receive_some(max_bytes or 65536)
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from exc
        return bytes(data) if isinstance(data, memoryview) else data  # valid until the next call

    async def aclose(self) -> None:
        self._stream.close()
        await trio.lowlevel.checkpoint()


class _StreamDialer:
    """TCP through any stream-capable outbound (socks, http, shadowsocks, a group...).

    Plain-UDP servers behind it are asked over TCP (open_datagram gives None): one
    CONNECT per query is cheaper than a UDP ASSOCIATE per query (a control connection
    *and* a relay socket), and the servers answer the same.
    """

    def __init__(self, outbound: StreamOutbound) -> None:
        self._outbound = outbound
        self.label = outbound.tag

    async def open_stream(self, addr: SockAddr, timeout: float) -> trio.abc.Stream:  # noqa: ASYNC109
        try:
            upstream = await self._outbound.open_stream(Destination(addr), timeout=timeout)
        except (OSError, FlowRefused) as exc:  # DialError: a complete reason
            raise UpstreamError(f"through {self.label}: {exc}") from exc
        if isinstance(upstream, StreamUpstream):  # shadowsocks, trojan: bytes transformed
            return _UpstreamStream(upstream.stream)
        if not isinstance(upstream, SocketUpstream):
            raise UpstreamError(f"through {self.label}: this outbound cannot carry DNS queries")
        if upstream.early:  # a DNS server never speaks first
            close_socket(upstream.sock)
            raise UpstreamError(f"through {self.label}: unexpected bytes before the query")
        return trio.SocketStream(trio.socket.from_stdlib_socket(upstream.sock))

    async def open_datagram(self, addr: SockAddr) -> DatagramEndpoint | None:
        await trio.lowlevel.checkpoint()
        return None


def dialer_for(outbound: object, resolver: Resolver) -> UpstreamDialer:
    """The dialer for DNS traffic routed to ``outbound`` (``resolver`` finds a proxy
    given by name); raises DialerUnavailable."""
    direct_mark = getattr(outbound, "direct_mark", None)
    if isinstance(direct_mark, int):  # it sends from this host itself: UDP included
        return DirectDialer(direct_mark, getattr(outbound, "tag", "direct"))
    streams = stream_capable(outbound)
    if streams is not None and not getattr(outbound, "local_only", False):
        return _StreamDialer(streams)
    tag = getattr(outbound, "tag", "?")
    kind = getattr(outbound, "kind", None) or type(outbound).__name__
    raise DialerUnavailable(f"outbound {tag!r} ({kind}) cannot carry DNS queries")
