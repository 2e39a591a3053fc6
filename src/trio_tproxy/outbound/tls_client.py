"""A TLS client connection for the outbounds: a non-blocking stdlib SSLSocket driven
by trio's readiness waits (:class:`TlsSocket`), and the session kept per server so that
the next connection resumes (:class:`SessionCache`). Trojan's; anything else that
speaks TLS to a proxy server may use them.
"""

from __future__ import annotations

import socket
import ssl
import time

import trio

from ..relay import BufferPool
from ..sock import close_socket, set_reset_on_close
from .tls_native import NativeSession, NativeSessions

# SessionCache: after this many connections in a row that did not resume, resumption
# is not tried again for RESUME_RETRY seconds.
MAX_MISSES = 3
RESUME_RETRY = 600.0
# TlsSocket.receive_batch: what one batch of records holds, and how many idle buffers
# are kept for the next one (of any flow).
BATCH_SIZE = 65536
KEEP_BATCHES = 16
# Only a record this large is taken for part of a stream whose next records may be in
# already: after a short one, another read would only fail (and cost a syscall).
BATCH_AFTER = 4096

_batches = BufferPool(BATCH_SIZE, keep=KEEP_BATCHES)


class SessionCache:
    """The newest TLS session with one server under one SNI, offered by every new
    connection so that it resumes: an abbreviated handshake, no certificate for the
    server to send nor for us to decode and verify, no signature for it to make.

    One cache per outbound (one context): a session is never offered to another server
    or name, and it comes from a connection that passed this outbound's verification
    (the context's CA and host name check); a server that refuses it gets a full,
    verified handshake.

    The session is reused, as Go's crypto/tls client cache does (v2ray's
    ``enableSessionResumption``, off by default in 4.34), rather than one ticket per
    connection as RFC 8446 C.4 suggests. With tls_native each connection is offered a
    duplicate, made without DER; otherwise through ``session=``, which CPython before
    3.12.7 / 3.13.1 copies through DER, the server's certificate included, both when it
    is read from a connection and when it is given to one: that decoding is most of an
    OpenSSL 3.0 handshake, and a fresh ticket per connection cost more client CPU than a
    full handshake (loopback against trojan-gfw, the best of 8 rounds of 200
    connections: full 622, a ticket each 707, reused 532 us per connection).

    The session is replaced when a connection offered it did not resume (refused,
    expired, or spoilt: that connection did a full handshake) and once it is past half
    its lifetime, by a newer one from a resumed connection (a server that resumes
    without a new ticket gives none: then it is kept until refused). A server that
    does not resume (it refuses, or gives no ticket) MAX_MISSES times in a row is not
    asked again for RESUME_RETRY seconds: trying would cost more than it saves. Only a
    connection offered the current session counts: the flows that were under way with
    one the server has forgotten (it restarted) are one miss, not one each."""

    def __init__(self, native: NativeSessions | None = None) -> None:
        self.native = native  # None: through CPython's ``session``
        self._session: ssl.SSLSession | NativeSession | None = None
        self._renewed: object | None = None  # a session a resumption did not renew
        self._misses = 0  # connections in a row that neither resumed nor gave a session
        self._paused_until = 0.0  # time.monotonic()

    def offer(self) -> ssl.SSLSession | NativeSession | None:
        return self._session

    def wrap(self, context: ssl.SSLContext, raw: socket.socket, server_hostname: str | None
             ) -> tuple[ssl.SSLSocket, ssl.SSLSession | NativeSession | None]:  # fmt: skip
        """``raw`` as a TLS client connection (handshake not begun) offered the session
        if there is one; the session it was offered (for :meth:`keep`), or None."""
        session = self._session
        if not isinstance(session, NativeSession) or self.native is None:
            sock = context.wrap_socket(raw, server_hostname=server_hostname,
                                       do_handshake_on_connect=False,
                                       session=session)  # type: ignore[arg-type]  # fmt: skip
            return sock, session
        sock = context.wrap_socket(raw, server_hostname=server_hostname,
                                   do_handshake_on_connect=False)  # fmt: skip
        return sock, session if self.native.offer(sock, session) else None

    def _fresh(self) -> bool:
        session = self._session
        if session is None:
            return False
        # the server's ticket lifetime (trojan-gfw: its session_timeout, 600 s) is
        # usually shorter than the session's own timeout (OpenSSL's client: 7200 s)
        lifetime = min(session.ticket_lifetime_hint or session.timeout, session.timeout)
        return time.time() <= session.time + lifetime / 2

    def keep(self, sock: ssl.SSLSocket, *, offered: object | None) -> None:
        """Called at a connection's first bytes from the server (a TLS 1.3 ticket comes
        after the handshake, ahead of the server's data, so by then it has one);
        ``offered``: the session the connection was offered (:meth:`wrap`), or None."""
        if sock.session_reused:
            self._misses = 0
            if self._fresh() or self._session is self._renewed:
                return  # (a resumption that gave no newer session will not either)
        elif time.monotonic() < self._paused_until:
            return
        elif offered is not None:
            if offered is not self._session:
                return  # one the cache replaced already (or dropped): counted then
            self._misses += 1  # refused, expired at the server, or spoilt
        # only when one is wanted: CPython's is a DER copy (before 3.12.7 / 3.13.1)
        session = self.native.session_of(sock) if self.native is not None else sock.session
        current = self._session
        if sock.session_reused and current is not None and session is not None \
                and session.time <= current.time:  # fmt: skip
            self._renewed = current  # the same session (TLS 1.2 by id): keep it till refused
        elif session is not None and (session.has_ticket
                                      or (sock.version() != "TLSv1.3" and session.id)):  # fmt: skip
            self._session = session
        elif not sock.session_reused:
            self._misses += 1  # nothing to resume with
        if self._misses >= MAX_MISSES:
            self._session, self._misses = None, 0
            self._paused_until = time.monotonic() + RESUME_RETRY


class TlsSocket:
    """A non-blocking stdlib SSLSocket driven by trio's readiness waits.

    OpenSSL reads and writes the descriptor itself: no memory BIOs and no copies
    between layers: under half the CPU per byte of trio.SSLStream (bench_encrypted:
    0.12-0.15 against 0.30 CPU-seconds per Gbit). One task
    may send while another receives (the relay's two pumps)."""

    def __init__(self, sock: ssl.SSLSocket, sessions: SessionCache | None = None, *,
                 offered: object | None = None) -> None:  # fmt: skip
        self.sock = sock
        self._sessions = sessions  # told of this connection at its first bytes
        self._offered = offered  # the session it was offered to resume, if one
        self._held: bytearray | None = None  # the buffer of the last receive_batch

    async def handshake(self) -> None:
        while True:
            try:
                self.sock.do_handshake()
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(self.sock)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(self.sock)
            else:
                return

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        sock = self.sock
        while view:
            try:
                view = view[sock.send(view):]
            except ssl.SSLWantWriteError:  # retried with the same bytes, as OpenSSL wants
                await trio.lowlevel.wait_writable(sock)
            except ssl.SSLWantReadError:  # the receiving pump waits for readability
                await trio.sleep(0.001)

    async def receive_some(self, max_bytes: int) -> bytes:
        """Up to ``max_bytes``; empty at the end (close_notify, or a bare FIN)."""
        sock = self.sock
        while True:
            try:
                data = sock.recv(max_bytes)
            except ssl.SSLWantReadError:
                await trio.lowlevel.wait_readable(sock)
            except ssl.SSLWantWriteError:
                await trio.lowlevel.wait_writable(sock)
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                return b""
            else:
                if self._sessions is not None and data:
                    self._sessions.keep(sock, offered=self._offered)
                    self._sessions = None
                return data

    async def receive_batch(self) -> memoryview:
        """The records in now, as many as fill one buffer, as a view valid until the
        next call; empty at the end. A server writes a record per read of its own
        (trojan-gfw: 8 KiB), and OpenSSL reads one per call: taking what is in
        without waiting makes one send to the client of up to 64 KiB, not one per
        record. The buffer goes back while the stream waits: idle flows hold none."""
        if self._held is not None:  # the caller is done with the last batch
            _batches.release(self._held)
            self._held = None
        sock = self.sock
        while True:
            buf = _batches.acquire()
            view = memoryview(buf)
            try:
                n = sock.recv_into(view)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError) as exc:
                _batches.release(buf)
                if isinstance(exc, ssl.SSLWantReadError):
                    await trio.lowlevel.wait_readable(sock)
                else:
                    await trio.lowlevel.wait_writable(sock)
                continue
            except (ssl.SSLEOFError, ssl.SSLZeroReturnError):
                n = 0
            if not n:
                _batches.release(buf)
                return memoryview(b"")
            if self._sessions is not None:
                self._sessions.keep(sock, offered=self._offered)
                self._sessions = None
            self._held = buf
            if n < BATCH_AFTER:  # a short record is an answer, not a stream: no more yet
                return view[:n]
            return view[: n + _read_more(sock, view[n:])]

    def close(self, *, reset: bool = False) -> None:
        self._held = None  # not back to the free list: a caller may still hold the view
        if reset:
            set_reset_on_close(self.sock)
        close_socket(self.sock)


def _read_more(sock: ssl.SSLSocket, view: memoryview) -> int:
    """Fill ``view`` with what can be read without waiting; how much was."""
    total = 0
    while total < len(view):
        try:
            n = sock.recv_into(view[total:])
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, ssl.SSLEOFError,
                ssl.SSLZeroReturnError):  # fmt: skip
            break  # the next call waits, or sees the end
        if not n:
            break
        total += n
    return total
