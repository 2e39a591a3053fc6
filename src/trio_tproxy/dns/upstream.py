"""Asking one DNS server: plain UDP (TCP on truncation), TCP, DoT (RFC 7858), DoH (RFC 8484).

An upstream takes a query in wire form and returns the server's reply in wire form;
checking that the reply answers the question is the caller's business. The time limit
is the caller's too (``DnsServerConfig.timeout`` around each exchange). Every failure
is an :class:`UpstreamError` whose text is a complete reason for the log.

Where the socket goes is decided per exchange by ``route``: the server's address
(resolved once if it is a host name) and the dialer of the outbound its traffic takes.

Stream transports keep a few idle connections (TLS handshakes cost more than the query)
and use each for one query at a time. A reused connection may have been closed by the
server in the meantime; such a failure is retried once on a fresh connection.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
import struct
from collections.abc import Awaitable, Callable
from typing import Final, Literal, Protocol

import attrs
import trio

from ..addr import IPAddress, SockAddr, unmap
from .dialer import UpstreamDialer, UpstreamError
from .message import HEADER_LEN, with_id

log = logging.getLogger("trio_tproxy.dns.upstream")

__all__ = ["Endpoint", "Route", "Upstream", "make_upstream"]

Scheme = Literal["udp", "tcp", "tls", "https"]
Route = Callable[[], Awaitable[tuple[SockAddr, UpstreamDialer]]]

DNS_MESSAGE: Final = "application/dns-message"
# Idle connections kept per server, and for how long: servers drop idle clients after
# ~10 s (dnsdist, unbound); keeping them longer only buys a failed first write.
MAX_IDLE: Final = 4
IDLE_LIFETIME: Final = 10.0
# Concurrent connections per server: a burst of distinct queries must not open hundreds.
MAX_CONNECTIONS: Final = 16
# Stray datagrams (other IDs, late answers) read before a UDP exchange gives up.
MAX_STRAY: Final = 16
_FLAG_TC = 0x02  # in the third header byte


@attrs.frozen
class Endpoint:
    scheme: Scheme
    host: str  # an IP literal or, for tls/https, a host name
    port: int
    path: str = "/dns-query"
    tls_ca: str | None = None

    @property
    def ip(self) -> IPAddress | None:
        """The server's address when it is written as one (else it needs resolving)."""
        try:
            return unmap(ipaddress.ip_address(self.host))
        except ValueError:
            return None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        suffix = self.path if self.scheme == "https" else ""
        return f"{self.scheme}://{host}:{self.port}{suffix}"


class Upstream(Protocol):
    endpoint: Endpoint

    async def exchange(self, query: bytes) -> bytes: ...


def _truncated(reply: bytes) -> bool:
    return len(reply) >= HEADER_LEN and bool(reply[2] & _FLAG_TC)


async def _receive_exactly(stream: trio.abc.Stream, count: int, buffer: bytearray) -> bytes:
    while len(buffer) < count:
        chunk = await stream.receive_some(65536)
        if not chunk:
            raise UpstreamError("the server closed the connection")
        buffer += chunk
    data = bytes(buffer[:count])
    del buffer[:count]
    return data


async def _stream_exchange(stream: trio.abc.Stream, query: bytes) -> bytes:
    """RFC 1035 4.2.2: a 2-byte length, then the message; one query, one answer."""
    await stream.send_all(struct.pack(">H", len(query)) + query)
    buffer = bytearray()
    (length,) = struct.unpack(">H", await _receive_exactly(stream, 2, buffer))
    reply = await _receive_exactly(stream, length, buffer)
    if reply[:2] != query[:2]:
        raise UpstreamError("the answer on the connection has another ID")
    return reply


def _ssl_context(endpoint: Endpoint, alpn: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=endpoint.tls_ca)
    context.set_alpn_protocols(alpn)
    return context


class _Connections:
    """Idle connections of one server, and the bound on how many may be open."""

    def __init__(self) -> None:
        self._idle: list[tuple[float, trio.abc.Stream]] = []
        self.limit = trio.Semaphore(MAX_CONNECTIONS)

    def take(self) -> trio.abc.Stream | None:
        now = trio.current_time()
        while self._idle:
            since, stream = self._idle.pop()
            if now - since < IDLE_LIFETIME:
                return stream
            _discard(stream)
        return None

    def give_back(self, stream: trio.abc.Stream) -> None:
        if len(self._idle) < MAX_IDLE:
            self._idle.append((trio.current_time(), stream))
        else:
            _discard(stream)


def _discard(stream: trio.abc.Stream) -> None:
    # Closing a transport synchronously: the TLS close_notify is not worth a wait.
    transport = getattr(stream, "transport_stream", stream)
    if isinstance(transport, trio.SocketStream):
        transport.socket.close()


class UdpUpstream:
    def __init__(self, endpoint: Endpoint, route: Route) -> None:
        self.endpoint = endpoint
        self._route = route
        self._tcp = StreamUpstream(endpoint, route)

    async def exchange(self, query: bytes) -> bytes:
        addr, dialer = await self._route()
        channel = await dialer.open_datagram(addr)
        if channel is None:  # the outbound carries no UDP: TCP through it instead
            return await self._tcp.exchange(query)
        try:
            await channel.send(query)
            for _ in range(MAX_STRAY):
                reply = await channel.receive()
                if len(reply) >= HEADER_LEN and reply[:2] == query[:2] and reply[2] & 0x80:
                    break
            else:
                raise UpstreamError("only stray datagrams from the server")
        finally:
            channel.close()
        if _truncated(reply):  # RFC 7766: the full answer over TCP
            log.debug("%s: truncated answer, asking over TCP", self.endpoint)
            return await self._tcp.exchange(query)
        return reply


class StreamUpstream:
    """DNS over TCP, or over TLS (DoT) when the endpoint's scheme is ``tls``."""

    def __init__(self, endpoint: Endpoint, route: Route) -> None:
        self.endpoint = endpoint
        self._route = route
        self._pool = _Connections()
        self._tls = _ssl_context(endpoint, ["dot"]) if endpoint.scheme == "tls" else None
        self.opened = 0  # connections opened (reuse shows in tests and stats)

    async def _connect(self) -> trio.abc.Stream:
        addr, dialer = await self._route()
        self.opened += 1
        stream = await dialer.open_stream(addr, 30.0)  # the caller's timeout is tighter
        if self._tls is None:
            return stream
        tls = trio.SSLStream(stream, self._tls, server_hostname=self.endpoint.host)
        try:
            await tls.do_handshake()
        except (trio.BrokenResourceError, ssl.SSLError) as exc:
            await trio.aclose_forcefully(tls)
            raise UpstreamError(f"TLS handshake with {self.endpoint}: {_reason(exc)}") from exc
        return tls

    async def _ask(self, stream: trio.abc.Stream, query: bytes) -> tuple[bytes, bool]:
        """The reply, and whether the connection may carry another query."""
        return await _stream_exchange(stream, query), True

    def _done(self, stream: trio.abc.Stream, reusable: bool) -> None:
        if reusable:
            self._pool.give_back(stream)
        else:
            _discard(stream)

    async def exchange(self, query: bytes) -> bytes:
        async with self._pool.limit:
            stream = self._pool.take()
            if stream is not None:
                try:
                    reply, reusable = await self._ask(stream, query)
                except (UpstreamError, trio.BrokenResourceError, trio.ClosedResourceError,
                        ssl.SSLError, OSError):  # fmt: skip
                    await trio.aclose_forcefully(stream)  # stale: one fresh try below
                else:
                    self._done(stream, reusable)
                    return reply
            stream = await self._connect()
            try:
                reply, reusable = await self._ask(stream, query)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError,
                    OSError) as exc:  # fmt: skip
                await trio.aclose_forcefully(stream)
                raise UpstreamError(f"{self.endpoint}: {_reason(exc)}") from exc
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            self._done(stream, reusable)
            return reply


class DohUpstream(StreamUpstream):
    """RFC 8484 POST over HTTP/1.1 (keep-alive) on TLS."""

    def __init__(self, endpoint: Endpoint, route: Route) -> None:
        super().__init__(endpoint, route)
        self._tls = _ssl_context(endpoint, ["http/1.1"])

    async def _ask(self, stream: trio.abc.Stream, query: bytes) -> tuple[bytes, bool]:
        # the HTTP/1.1 reader only where a config names a DoH server
        from .http1 import NEED_MORE, HttpError, build_post, read_response  # noqa: PLC0415

        # RFC 8484 4.1: ID 0 makes answers cacheable by HTTP caches; ours goes back on.
        request = build_post(self.endpoint.host, self.endpoint.path, with_id(query, 0), DNS_MESSAGE)
        await stream.send_all(request)
        data = b""
        while True:
            chunk = await stream.receive_some(65536)
            data += chunk
            try:
                found = read_response(data, eof=not chunk)
            except HttpError as exc:
                raise UpstreamError(f"{self.endpoint}: {exc}") from exc
            if found is not NEED_MORE:
                break
        response, used = found  # type: ignore[misc]
        if response.status != 200:
            raise UpstreamError(f"{self.endpoint}: HTTP status {response.status}")
        if response.headers.get("content-type", "").split(";")[0].strip().lower() != DNS_MESSAGE:
            raise UpstreamError(f"{self.endpoint}: answer is not {DNS_MESSAGE}")
        if len(response.body) < HEADER_LEN:
            raise UpstreamError(f"{self.endpoint}: answer shorter than a DNS header")
        reusable = response.keep_alive and used == len(data)
        return with_id(response.body, int.from_bytes(query[:2], "big")), reusable


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate not trusted ({exc.verify_message})"
    cause = exc.__cause__ or exc.__context__
    if isinstance(exc, trio.BrokenResourceError) and cause is not None:
        return _reason(cause)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def make_upstream(endpoint: Endpoint, route: Route) -> Upstream:
    if endpoint.scheme == "udp":
        return UdpUpstream(endpoint, route)
    if endpoint.scheme == "https":
        return DohUpstream(endpoint, route)
    return StreamUpstream(endpoint, route)
