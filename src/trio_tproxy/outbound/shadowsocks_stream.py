"""The ``shadowsocks`` outbound's TCP connection, once open (shadowsocks.py opens it):
as the relay's ByteStream (:class:`ShadowsocksStream`, its pumps) and as the relay
engine's codec (:class:`ShadowsocksCodec`, while the flow is short), over one cipher
state. Both apply the first-answer rule the outbound keeps: an unproven key must see a
decryptable answer within ``policy.handshake``; a response that fails authentication,
a replayed or stale 2022 header, or a close before any answer all reset the flow with
one line naming the outbound.
"""

from __future__ import annotations

import contextlib
import math
import socket
from collections.abc import Callable
from typing import Protocol

import trio

from ..dial import DialError
from ..relay import BufferPool, send_all
from ..sock import BulkReceive, close_socket, close_unwatched, set_reset_on_close
from . import shadowsocks_decoder as decoder
from . import shadowsocks_proto as proto
from .socks_proto import Host

# The upload's wire buffers: a relay chunk (policy.buffer_size, 64 KiB by default) with
# its chunk overhead and a salt; a larger write is sealed into bytes of its own.
WIRE_SIZE = 65536 + 8 * (2 + 2 * proto.TAG_LEN) + 32
_wires = BufferPool(WIRE_SIZE, keep=8)


class Server(Protocol):
    """What a stream needs of its outbound (shadowsocks.ShadowsocksOutbound)."""

    def first_write(self, enc: proto.Encryptor, host: Host, port: int, initial: bytes
                    ) -> bytes: ...  # fmt: skip

    def proven(self) -> bool: ...  # a recent answer decrypted with this key

    def prove(self) -> None: ...  # one did now

    def failed(self, reason: str) -> DialError: ...  # a flow's error for a key problem


class ShadowsocksStream:
    """One flow's connection to the server, as the relay's ByteStream.

    ``target``, when given, has not been requested yet: the request goes in one write
    with the client's first bytes, or alone at the first read. The relay's uplink reads
    the client before its downlink first reads here, so a client that spoke first has
    its bytes sent with the request; one that waits for the server waits no longer."""

    def __init__(  # noqa: PLR0917
        self, outbound: Server, sock: socket.socket, enc: proto.Encryptor,
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
                failure = self._read_failed(exc)
                if failure is exc:
                    raise
                raise failure from exc
            if not n:
                dec.release()
                self._at_eof()
                return memoryview(b"")
            self._bulk.received(n)
            try:
                plain = self._decode(n)
            except OSError:
                dec.release()
                raise
            if plain:
                return plain

    async def _wait_readable(self) -> None:
        """Until the first answer, while the key is unproven, within the handshake."""
        deadline = self._answer_by()
        if deadline == math.inf:
            await self._bulk.wait()
            return
        with trio.move_on_at(deadline):
            await trio.lowlevel.wait_readable(self._sock)
            return
        raise self._no_answer()

    # -- the first-answer rules, for the pumps above and the engine's codec ------------

    def _decode(self, n: int) -> memoryview:
        """``n`` more bytes are in the decryptor: the plaintext now whole; the first
        that decrypts proves the key."""
        try:
            plain = self._dec.received(n)
        except proto.ShadowsocksError as exc:
            raise self._ob.failed(str(exc)) from None
        if plain and not self._answered:
            self._answered = True
            self._ob.prove()
        return plain

    def _at_eof(self) -> None:
        if not self._answered:
            raise self._ob.failed("the server closed the connection without answering "
                                  "(wrong password or method?)")  # fmt: skip

    def _read_failed(self, exc: OSError) -> OSError:
        if self._answered:
            return exc
        return self._ob.failed(f"{exc.strerror or exc} before any answer "
                               "(wrong password or method?)")  # fmt: skip

    def _answer_by(self) -> float:
        if self._answered or self._ob.proven():
            return math.inf
        return self._deadline

    def _no_answer(self) -> DialError:
        return self._ob.failed(
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

    __slots__ = ("_dec", "_enc", "_stream", "sock")

    def __init__(self, stream: ShadowsocksStream) -> None:
        self._stream, self.sock = stream, stream._sock
        self._enc, self._dec = stream._enc, stream._dec

    def wire_size(self, n: int) -> int:
        return self._enc.wire_size(n)

    def encode_into(self, data: memoryview, out: memoryview) -> int:
        return self._enc.encrypt_into(data, out)

    def inbox(self) -> memoryview:
        return self._dec.buffer()

    def decode(self, n: int) -> memoryview:
        return self._stream._decode(n)

    def at_eof(self) -> None:
        self._stream._at_eof()

    def read_failed(self, exc: OSError) -> OSError:
        return self._stream._read_failed(exc)

    def rest(self) -> None:
        self._dec.release()

    def answer_by(self) -> float:
        return self._stream._answer_by()

    def unanswered(self) -> OSError | None:
        if self.answer_by() == math.inf:  # answered, or proven by another flow meanwhile
            return None
        return self._stream._no_answer()


__all__ = ["ShadowsocksCodec", "ShadowsocksStream"]
