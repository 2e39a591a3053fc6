"""The ``shadowsocks`` outbound: AEAD (SIP004) and 2022 (SIP022) methods, TCP and UDP.

TCP: one connection to the server per flow. The first write carries the salt, the
request header (the SOCKS-style address: the sniffed domain when there is one, else
the IP) and the client's first bytes, so the flow costs no extra round trip (when
sniffing did not read them, the request waits for the client's first write). The
connection is a :class:`~trio_tproxy.upstreams.StreamUpstream`: bytes are encrypted and
decrypted in userspace (shadowsocks_proto.py, shadowsocks_decoder.py: sans-IO), by the
relay engine's pass while the flow is short (:class:`ShadowsocksCodec`), then by the
relay's two pumps.

A Shadowsocks server never says "wrong key": ss-server holds such a connection open
in silence, others close it. So until a response has once decrypted with our key, a
flow whose server has not answered within ``policy.handshake`` of its request is cut
and logged as a likely wrong password or method; once the key is proven (a valid
response in the last :data:`PROVEN_FOR` seconds) slow destinations (long polls) are
left alone. A response that fails authentication, a replayed or stale 2022 header, or a
close before any answer all reset the flow with one line naming the outbound.

UDP (``network`` includes "udp"): one socket per client session, connected to the
server (shadowsocks_udp.py).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import socket
from collections.abc import Callable

import trio

from ..addr import IPAddress
from ..config import ShadowsocksOutbound as ShadowsocksConfig
from ..dial import DialError, ip_literal, open_tcp_host
from ..inbound.sockopt import set_mark
from ..relay import BufferPool, send_all
from ..resolver import Resolver, SystemResolver
from ..sock import (
    BulkReceive,
    addr_to_sockaddr,
    close_socket,
    close_unwatched,
    family_of,
    set_reset_on_close,
)
from . import shadowsocks_decoder as decoder
from . import shadowsocks_proto as proto
from .base import Destination, StreamUpstream, UdpRequest
from .shadowsocks_udp import ShadowsocksUdpLink
from .socks_proto import Host, encode_address
from .tunnel import handshake_timeout

log = logging.getLogger("trio_tproxy.outbound.shadowsocks")

# A key counts as proven for this long after a response decrypted with it.
PROVEN_FOR = 600.0
WARN_EVERY = 60.0  # seconds between two warnings about the same outbound's key
# The upload's wire buffers: a relay chunk (policy.buffer_size, 64 KiB by default) with
# its chunk overhead and a salt; a larger write is sealed into bytes of its own.
WIRE_SIZE = 65536 + 8 * (2 + 2 * proto.TAG_LEN) + 32
_wires = BufferPool(WIRE_SIZE, keep=8)


class ShadowsocksOutbound:
    def __init__(self, cfg: ShadowsocksConfig, resolver: Resolver | None = None) -> None:
        self.tag: str = cfg.tag
        self.method: str = cfg.method
        self.v2022 = proto.is_2022(cfg.method)
        # ValueError for a 2022 password that is not a key of the right length: `check`
        # reports it with its path before anything is built.
        self.key = proto.master_key(cfg.method, cfg.password)
        self.host = cfg.server.host
        self.port = cfg.server.port
        self.ip: IPAddress | None = ip_literal(self.host)
        self.mark = cfg.mark
        self.udp = "udp" in cfg.network
        self.tcp = "tcp" in cfg.network
        self.resolver: Resolver = resolver or SystemResolver()
        self.name = f"shadowsocks {self.tag}"
        self._proven_until = -1.0
        self._warned_at = -WARN_EVERY

    # -- key state -------------------------------------------------------------------

    def proven(self) -> bool:
        return trio.current_time() < self._proven_until

    def prove(self) -> None:
        self._proven_until = trio.current_time() + PROVEN_FOR

    def failed(self, reason: str) -> DialError:
        """The flow's error for a likely key problem; warns at most every WARN_EVERY."""
        message = f"{self.name}: {reason}"
        now = trio.current_time()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("%s", message)
        return DialError(errno.EPROTO, message)

    # -- TCP -------------------------------------------------------------------------

    def _encryptor(self) -> proto.Encryptor:
        if self.v2022:
            return proto.RequestEncoder(self.method, self.key)
        return proto.Encryptor(self.method, self.key)

    def first_write(self, enc: proto.Encryptor, host: Host, port: int, initial: bytes) -> bytes:
        """Salt, request header and the client's first bytes (SIP022: padding instead
        when there are none)."""
        if not isinstance(enc, proto.RequestEncoder):
            return enc.encrypt(encode_address(host, port) + initial)
        # The variable header holds at most 0xFFFF bytes: what does not fit follows.
        room = proto.MAX_PAYLOAD_2022 - len(encode_address(host, port)) - 2
        head = enc.header(host, port, initial[:room])
        if len(initial) > room:
            head += enc.encrypt(initial[room:])
        return head

    async def _connect(self, deadline: float, timeout: float) -> socket.socket:  # noqa: ASYNC109
        """The server's connection. A connect to an IP has its own timeout: no cancel
        scope per flow for it; a name's lookup counts against the handshake too."""
        try:
            if self.ip is not None:
                return await open_tcp_host(self.ip, self.port, resolver=self.resolver,
                                           mark=self.mark, timeout=timeout)  # fmt: skip
            with trio.move_on_at(deadline):
                return await open_tcp_host(self.host, self.port, resolver=self.resolver,
                                           mark=self.mark, timeout=timeout)  # fmt: skip
        except DialError as exc:
            raise DialError(exc.errno, f"{self.name}: {exc}") from exc
        raise handshake_timeout(self.name, timeout)

    async def open_stream(
        self,
        destination: Destination,
        *,
        timeout: float,  # noqa: ASYNC109
        initial: bytes = b"",
    ) -> StreamUpstream:
        if not self.tcp:
            raise DialError(errno.EPROTONOSUPPORT, f"{self.name}: network excludes tcp")
        target = (destination.host, destination.port)
        enc = self._encryptor()
        try:
            # Nothing from the client yet (sniffing off, a server-first port): the
            # request waits for its first bytes, to go in one write and one segment
            # with them (see ShadowsocksStream); else it goes now, with them.
            first = self.first_write(enc, *target, initial) if initial else b""
            encode_address(*target)
        except ValueError as exc:  # a name over 255 bytes
            raise DialError(errno.EINVAL, f"{self.name}: cannot request it: {exc}") from exc
        deadline = trio.current_time() + timeout
        sock = await self._connect(deadline, timeout)
        if first:
            try:
                sent = sock.send(first)
                if sent < len(first):
                    with trio.move_on_at(deadline) as scope:
                        await send_all(sock, memoryview(first)[sent:])
                    if scope.cancelled_caught:
                        raise handshake_timeout(self.name, timeout)
            except OSError as exc:
                close_socket(sock)
                if isinstance(exc, DialError):
                    raise
                reason = f"{self.name}: sending the request failed: {exc}"
                raise DialError(exc.errno or errno.EIO, reason) from exc
            except BaseException:  # cancelled meanwhile
                close_socket(sock)
                raise
        if self.v2022:
            dec: decoder.Decryptor = decoder.ResponseDecoder(self.method, self.key, enc.salt)
        else:
            dec = decoder.Decryptor(self.method, self.key)
        stream = ShadowsocksStream(self, sock, enc, dec, deadline, timeout,
                                   None if first else target)  # fmt: skip
        return StreamUpstream(stream, chain=(self.tag,))

    # -- UDP -------------------------------------------------------------------------

    async def open_udp(self, request: UdpRequest) -> ShadowsocksUdpLink:
        if not self.udp:
            raise DialError(errno.EPROTONOSUPPORT,
                            f"outbound {self.tag!r} (shadowsocks) does not carry UDP: "
                            "network excludes udp")  # fmt: skip
        ip = self.ip
        if ip is None:
            with trio.move_on_after(request.handshake_timeout):
                ips = await self.resolver.resolve(self.host)
                ip = ips[0] if ips else None
            if ip is None:
                raise DialError(errno.EHOSTUNREACH, f"{self.name}: cannot resolve {self.host!r}")
        sock = socket.socket(family_of(ip), socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            set_mark(sock, self.mark)
            # Connected: the kernel drops datagrams from anyone but the server.
            sock.connect(addr_to_sockaddr((ip, self.port), sock.family))
        except OSError as exc:
            sock.close()
            raise DialError(exc.errno or errno.EIO,
                            f"{self.name}: UDP socket: {exc.strerror or exc}") from exc  # fmt: skip
        return ShadowsocksUdpLink(self, sock, request.buffer)


class ShadowsocksStream:
    """One flow's connection to the server, as the relay's ByteStream.

    ``target``, when given, has not been requested yet: the request goes in one write
    with the client's first bytes, or alone at the first read. The relay's uplink reads
    the client before its downlink first reads here, so a client that spoke first has
    its bytes sent with the request; one that waits for the server waits no longer."""

    def __init__(  # noqa: PLR0917
        self, outbound: ShadowsocksOutbound, sock: socket.socket, enc: proto.Encryptor,
        dec: decoder.Decryptor, deadline: float, timeout: float,
        target: tuple[Host, int] | None = None,
    ) -> None:  # fmt: skip
        self._ob = outbound
        self._sock = sock
        self._enc = enc
        self._dec = dec
        self._deadline = deadline  # for the first answer, while the key is unproven
        self._timeout = timeout
        self._answered = False
        self._target = target
        self._request_sent: trio.Event | None = None  # set once a read sent it alone
        self._engine = False  # carried by the relay engine (engine_codec)
        self._bulk = BulkReceive(sock)  # a download's wake-ups, once it is bulk

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._target is not None:
            target, self._target = self._target, None
            wire = self._ob.first_write(self._enc, *target, bytes(data))
        else:
            if self._request_sent is not None:  # a read is sending the request: after it
                await self._request_sent.wait()
                self._request_sent = None
            if self._enc.wire_size(len(data)) <= WIRE_SIZE:  # the relay's chunks: sealed
                buf = _wires.acquire()  # straight into a buffer of the free list
                try:
                    n = self._enc.encrypt_into(data, memoryview(buf))
                    await send_all(self._sock, memoryview(buf)[:n])
                finally:
                    _wires.release(buf)
                return
            wire = self._enc.encrypt(data)
        await send_all(self._sock, wire)

    async def _send_request(self, target: tuple[Host, int]) -> None:
        self._request_sent = sent = trio.Event()
        try:
            await send_all(self._sock, self._ob.first_write(self._enc, *target, b""))
        finally:
            sent.set()

    async def receive_some(self, max_bytes: int) -> memoryview:
        """Plaintext of the whole chunks in, as a view valid until the next call: the
        kernel copies into the decryptor's buffer and the cipher out of it, nothing
        else does (``max_bytes`` is not a bound: a chunk comes whole)."""
        dec, sock = self._dec, self._sock
        if self._target is not None:  # the client has not spoken: the server needs it
            target, self._target = self._target, None
            await self._send_request(target)
        while True:
            try:
                n = sock.recv_into(dec.buffer())
            except BlockingIOError:
                dec.release()  # an idle flow holds no buffers
                self._bulk.received(0)
                await self._wait_readable()
                continue
            except OSError as exc:
                if not self._answered:
                    raise self._ob.failed(f"{exc.strerror or exc} before any answer "
                                          "(wrong password or method?)") from exc  # fmt: skip
                raise
            if not n:
                dec.release()
                if not self._answered:
                    raise self._ob.failed("the server closed the connection without "
                                          "answering (wrong password or method?)")  # fmt: skip
                return memoryview(b"")
            self._bulk.received(n)
            try:
                plain = dec.received(n)
            except proto.ShadowsocksError as exc:
                dec.release()
                raise self._ob.failed(str(exc)) from None
            if plain:
                if not self._answered:
                    self._answered = True
                    self._ob.prove()
                return plain

    async def _wait_readable(self) -> None:
        """Until the first answer, while the key is unproven, within the handshake."""
        if self._answered or self._ob.proven():
            await self._bulk.wait()
            return
        with trio.move_on_at(self._deadline):
            await trio.lowlevel.wait_readable(self._sock)
            return
        raise self._ob.failed(
            f"no answer within {self._timeout:g}s of the request (policy.handshake)"
            " - wrong password or method? (servers stay silent then)"
        )

    async def send_eof(self) -> None:
        if self._target is not None:  # the client said nothing at all: still requested
            target, self._target = self._target, None
            await self._send_request(target)
        elif self._request_sent is not None:  # a read is sending the request
            await self._request_sent.wait()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_WR)
        await trio.lowlevel.checkpoint()

    def close(self, *, reset: bool = False) -> None:
        if reset:
            set_reset_on_close(self._sock)
        if self._engine:  # relay_stream's: it closes once its tasks have ended
            close_unwatched(self._sock)
        else:
            close_socket(self._sock)

    async def engine_codec(self, client: socket.socket, count: Callable[[int], None],
                           ) -> ShadowsocksCodec:  # fmt: skip
        """The stream as the relay engine carries it. A request still held back goes
        now: with what the client has sent meanwhile (``count``-ed), else alone (a
        server-first protocol waits for the server)."""
        self._engine = True
        if self._target is not None:
            target, self._target = self._target, None
            first = b""
            with contextlib.suppress(BlockingIOError):
                first = client.recv(proto.MAX_PAYLOAD)  # EOF: b"", the engine sees it again
            await send_all(self._sock, self._ob.first_write(self._enc, *target, first))
            count(len(first))
        return ShadowsocksCodec(self)


class ShadowsocksCodec:
    """One flow's connection to the server as the relay engine drives it
    (relay_engine.Codec): :class:`ShadowsocksStream`'s own cipher state and
    first-answer rules, without tasks; the stream's pumps take over once it is bulk."""

    __slots__ = ("_dec", "_enc", "_ob", "_stream", "sock")

    def __init__(self, stream: ShadowsocksStream) -> None:
        self._stream = stream
        self._ob, self.sock = stream._ob, stream._sock
        self._enc, self._dec = stream._enc, stream._dec

    def wire_size(self, n: int) -> int:
        return self._enc.wire_size(n)

    def encode_into(self, data: memoryview, out: memoryview) -> int:
        return self._enc.encrypt_into(data, out)

    def inbox(self) -> memoryview:
        return self._dec.buffer()

    def decode(self, n: int) -> memoryview:
        try:
            plain = self._dec.received(n)
        except proto.ShadowsocksError as exc:
            raise self._ob.failed(str(exc)) from None
        if plain and not self._stream._answered:
            self._stream._answered = True
            self._ob.prove()
        return plain

    def at_eof(self) -> None:
        if not self._stream._answered:
            raise self._ob.failed("the server closed the connection without answering "
                                  "(wrong password or method?)")  # fmt: skip

    def read_failed(self, exc: OSError) -> OSError:
        if self._stream._answered:
            return exc
        return self._ob.failed(f"{exc.strerror or exc} before any answer "
                               "(wrong password or method?)")  # fmt: skip

    def rest(self) -> None:
        self._dec.release()

    def answer_by(self) -> float:
        if self._stream._answered or self._ob.proven():
            return math.inf
        return self._stream._deadline

    def unanswered(self) -> OSError | None:
        if self._stream._answered or self._ob.proven():
            return None
        return self._ob.failed(
            f"no answer within {self._stream._timeout:g}s of the request (policy.handshake)"
            " - wrong password or method? (servers stay silent then)"
        )


__all__ = ["ShadowsocksCodec", "ShadowsocksOutbound", "ShadowsocksStream"]
