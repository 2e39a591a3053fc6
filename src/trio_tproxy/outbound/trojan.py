"""The ``trojan`` outbound: Trojan over TLS, TCP (CONNECT) and UDP (UDP ASSOCIATE).

Each flow opens a TLS connection to the server (SNI ``sni``, else the server's host
name; no SNI when the server is an IP, whose certificate is then checked for that IP),
verified against the system store plus ``ca``, unless ``insecure``. The request — the
password's hex SHA-224, CRLF, the command, the SOCKS-style address (the sniffed domain
when there is one), CRLF — goes out in one TLS record together with the client's first
bytes. Trojan has no reply: the server relays at once. The next connection resumes the
TLS session (tls_client.SessionCache): no certificate to check again.

A wrong password is not refused either: the server hands the connection to its decoy
web site, whose answer would reach the client as if the destination had sent it. When
the first bytes back are an HTTP response although the client did not send an HTTP
request, that is the decoy, and the flow is reset with a line saying so. (A client that
did speak HTTP gets the decoy's reply, usually "400 Bad Request"; we cannot tell.)

TLS cannot half-close (a close_notify ends both directions), so the client's EOF is not
passed on; the relay's ``downlink_only`` timer ends the flow as it does for any upstream
that keeps talking. Python's TLS is OpenSSL's: the ClientHello has OpenSSL's
fingerprint, not a browser's (docs/upstreams.md).

UDP: one TLS connection per client session; each datagram travels as a frame
(address, length, CRLF, payload) and replies come back the same way.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable

import trio

from ..addr import Endpoint, IPAddress
from ..config import TrojanOutbound as TrojanConfig
from ..dial import DialError, ip_literal, open_tcp_host
from ..resolver import Resolver, SystemResolver
from ..sock import close_socket
from . import trojan_proto as proto
from .base import DatagramSink, Destination, StreamUpstream, UdpRequest
from .socks_proto import Host
from .tls_client import SessionCache, TlsSocket
from .tls_native import native_sessions
from .tunnel import handshake_timeout
from .udp_map import ReplyMap, datagram_host

log = logging.getLogger("trio_tproxy.outbound.trojan")

RECV_SIZE = 65536
# Datagrams waiting for the TLS connection, per UDP link; more are dropped (it is UDP).
UDP_QUEUE = 256
HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ",
                b"CONNECT ", b"TRACE ", b"PRI ")  # fmt: skip


def tls_context(cfg: TrojanConfig) -> ssl.SSLContext:
    """The outbound's TLS settings, built once (loading the system store costs ~ms).
    OSError / ssl.SSLError for an unreadable ``ca``: `check` reports it first."""
    ctx = ssl.create_default_context()
    # A TLS EOF without close_notify ends the stream as a close_notify does (the relay
    # never told them apart), and does not make OpenSSL spoil the connection's
    # session: CPython from 3.12.7 / 3.13.1 hands every connection the one session
    # object where tls_native is not used.
    ctx.options |= getattr(ssl, "OP_IGNORE_UNEXPECTED_EOF", 0)
    if cfg.ca:
        ctx.load_verify_locations(cafile=cfg.ca)
    if cfg.insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cfg.alpn:
        ctx.set_alpn_protocols(list(cfg.alpn))
    return ctx


def looks_like_decoy(initial: bytes, first: bytes) -> bool:
    """The server's fallback site answered: an HTTP response (or, from an HTTP/0.9-style
    error page, bare HTML) to a request that was not HTTP."""
    if initial.startswith(HTTP_METHODS):
        return False
    head = first.lstrip()[:9].lower()
    return head.startswith((b"http/1.", b"<!doctype", b"<html"))


class TrojanOutbound:
    def __init__(self, cfg: TrojanConfig, resolver: Resolver | None = None) -> None:
        self.tag: str = cfg.tag
        self.host = cfg.server.host
        self.port = cfg.server.port
        self.ip: IPAddress | None = ip_literal(self.host)
        # SNI: as configured, else the host name; an IP server is verified by its IP.
        self.server_hostname: str | None = cfg.sni or self.host
        self.mark = cfg.mark
        self.tcp = "tcp" in cfg.network
        self.udp = "udp" in cfg.network
        self.insecure = cfg.insecure
        self.password_hash = proto.password_hash(cfg.password)
        self.context = tls_context(cfg)
        self.sessions = SessionCache(native_sessions())
        self.resolver: Resolver = resolver or SystemResolver()
        self.name = f"trojan {self.tag}"

    async def _connect(self, request: bytes, timeout: float) -> TlsSocket:  # noqa: ASYNC109
        """TLS to the server and the request (if any yet), within ``timeout``."""
        raw: socket.socket | None = None
        tls: TlsSocket | None = None
        with trio.move_on_after(timeout) as scope:
            try:
                raw = await open_tcp_host(self.ip or self.host, self.port, resolver=self.resolver,
                                          mark=self.mark, timeout=timeout)  # fmt: skip
            except DialError as exc:
                raise DialError(exc.errno, f"{self.name}: {exc}") from exc
            try:
                wrapped, offered = self.sessions.wrap(self.context, raw, self.server_hostname)
                tls = TlsSocket(wrapped, self.sessions, offered=offered)
                raw = None  # the SSLSocket owns the descriptor now
                await tls.handshake()
                if request:
                    await tls.send_all(request)
            except (ssl.SSLError, OSError) as exc:
                if tls is not None:
                    tls.close()
                if raw is not None:
                    close_socket(raw)
                raise DialError(errno.ECONNABORTED, f"{self.name}: {_tls_reason(exc)}") from exc
            except BaseException:
                if tls is not None:
                    tls.close()
                if raw is not None:
                    close_socket(raw)
                raise
        if scope.cancelled_caught:
            if tls is not None:
                tls.close()
            if raw is not None:
                close_socket(raw)
            raise handshake_timeout(self.name, timeout)
        assert tls is not None
        return tls

    async def open_stream(
        self,
        destination: Destination,
        *,
        timeout: float,  # noqa: ASYNC109
        initial: bytes = b"",
    ) -> StreamUpstream:
        if not self.tcp:
            raise DialError(errno.EPROTONOSUPPORT, f"{self.name}: network excludes tcp")
        try:
            request = proto.encode_request(self.password_hash, proto.CMD_CONNECT,
                                           destination.host, destination.port, initial)  # fmt: skip
        except ValueError as exc:  # a name over 255 bytes
            raise DialError(errno.EINVAL, f"{self.name}: cannot request it: {exc}") from exc
        if initial:
            tls = await self._connect(request, timeout)
            return StreamUpstream(TrojanStream(self, tls, initial), chain=(self.tag,))
        # Nothing from the client yet (sniffing off, a server-first port): the request
        # waits for its first bytes, so both go in one TLS record and one segment and
        # the server reads once; the stream's first read sends it alone if the client
        # has nothing to say (the relay reads the client first: see TrojanStream).
        tls = await self._connect(b"", timeout)
        return StreamUpstream(TrojanStream(self, tls, initial, request), chain=(self.tag,))

    async def open_udp(self, request: UdpRequest) -> TrojanUdpLink:
        if not self.udp:
            raise DialError(errno.EPROTONOSUPPORT,
                            f"outbound {self.tag!r} (trojan) does not carry UDP: "
                            "network excludes udp")  # fmt: skip
        host = ip_literal(request.first_dst[0]) or request.first_dst[0]
        associate = proto.encode_request(self.password_hash, proto.CMD_UDP_ASSOCIATE, host,
                                         request.first_dst[1])  # fmt: skip
        tls = await self._connect(associate, request.handshake_timeout)
        return TrojanUdpLink(self, tls)


def _tls_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "TLS failed: the server closed the connection"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return f"TLS failed: {exc.strerror or exc}"
    return f"TLS failed: {exc}"


class TrojanStream:
    """One flow's TLS connection to the server, as the relay's ByteStream.

    ``request``, when given, has not been sent yet: it goes in one write with the
    client's first bytes, or alone at the first read. The relay's uplink reads the
    client before its downlink first reads here, so a client that spoke first (HTTP,
    TLS) has its bytes sent with the request; one that waits for the server does not
    wait for anything more than before."""

    def __init__(self, outbound: TrojanOutbound, tls: TlsSocket, initial: bytes,
                 request: bytes = b"") -> None:  # fmt: skip
        self._ob = outbound
        self._tls = tls
        self._initial = initial
        self._answered = False
        self._request = request
        self._request_sent: trio.Event | None = None  # set once a read sent it alone

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self._initial:  # not sniffed: what the client sent first is this
            self._initial = bytes(data[:16])
        if self._request:
            data, self._request = self._request + data, b""
        elif self._request_sent is not None:  # a read is sending the request: after it
            await self._request_sent.wait()
            self._request_sent = None
        try:
            await self._tls.send_all(data)
        except (ssl.SSLError, OSError) as exc:
            raise OSError(errno.EPIPE, f"{self._ob.name}: {_tls_reason(exc)}") from exc

    async def _send_request(self) -> None:
        request, self._request = self._request, b""
        self._request_sent = sent = trio.Event()
        try:
            await self._tls.send_all(request)
        finally:
            sent.set()

    async def receive_some(self, max_bytes: int) -> memoryview:
        """What the server sent, as a view valid until the next call (``max_bytes`` is
        not a bound: TlsSocket.receive_batch)."""
        try:
            if self._request:  # the client has not spoken: the server needs the request
                await self._send_request()
            data = await self._tls.receive_batch()
        except (ssl.SSLError, OSError) as exc:
            raise OSError(errno.ECONNRESET, f"{self._ob.name}: {_tls_reason(exc)}") from exc
        if not self._answered and data:
            self._answered = True
            if looks_like_decoy(self._initial, bytes(data[:64])):
                message = (f"{self._ob.name}: the server's fallback web site answered "
                           "(wrong password?)")  # fmt: skip
                log.warning("%s", message)
                raise DialError(errno.EACCES, message)
        return data

    async def send_eof(self) -> None:
        # TLS has no half-close: the downlink goes on until the server ends it or the
        # relay's downlink_only timer does.
        await trio.lowlevel.checkpoint()

    def close(self, *, reset: bool = False) -> None:
        self._tls.close(reset=reset)


class TrojanUdpLink:
    """One client session's datagrams over one TLS connection, as a UdpLink."""

    outcome: str | None = None

    def __init__(self, outbound: TrojanOutbound, tls: TlsSocket) -> None:
        self._ob = outbound
        self._tls = tls
        self._map = ReplyMap()
        self._out, self._queue = trio.open_memory_channel[bytes](UDP_QUEUE)
        self.closed = False
        self.sent = self.received = self.dropped = 0

    def send(self, payload: memoryview, dst: Endpoint, domain: str | None) -> str | None:
        if self.closed:
            return "link closed"
        host: Host = datagram_host(dst, domain)
        try:
            frame = proto.encode_udp_frame(host, dst[1], bytes(payload))
        except ValueError as exc:  # over 0xFFFF bytes, a name over 255
            self.dropped += 1
            return str(exc)
        try:
            self._out.send_nowait(frame)
        except trio.WouldBlock:
            self.dropped += 1
            return "send queue full"
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return "link closed"
        self._map.sent(dst, domain)
        self.sent += 1
        return None

    async def _write(self) -> None:
        async for frame in self._queue:
            batch = [frame]
            while len(batch) < 64:  # coalesce what is waiting into one TLS write
                try:
                    batch.append(self._queue.receive_nowait())
                except trio.WouldBlock:
                    break
            await self._tls.send_all(b"".join(batch))

    async def _read(self, deliver: DatagramSink) -> None:
        decoder = proto.UdpFrameDecoder()
        first = True
        while data := await self._tls.receive_some(RECV_SIZE):
            if first and looks_like_decoy(b"", bytes(data[:64])):
                raise proto.TrojanProtocolError("the server's fallback web site answered "
                                                "(wrong password?)")  # fmt: skip
            first = False
            for host, port, payload in decoder.feed(bytes(data)):
                remote = self._map.remote(host, port)
                if remote is None:
                    continue
                self.received += 1
                deliver(memoryview(payload), remote)

    async def receive(self, deliver: DatagramSink) -> None:
        """Deliver replies until closed; DialError when the server ends the connection
        (the session then opens a new link for the next datagram)."""
        ended: list[str] = []

        async def guarded(part: Callable[[], Awaitable[None]]) -> None:
            try:
                await part()
                ended.append("the server closed the connection")
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                ended.append(_tls_reason(exc))  # ssl.SSLError is an OSError
            except proto.TrojanProtocolError as exc:
                ended.append(str(exc))
            nursery.cancel_scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guarded, self._write)
            nursery.start_soon(guarded, lambda: self._read(deliver))
        if not self.closed:
            raise DialError(errno.ECONNRESET, f"{self._ob.name}: UDP: {ended[0]}")

    def close(self) -> None:
        self.closed = True
        self._out.close()
        self._tls.close()
