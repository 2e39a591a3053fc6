"""The relay engine (relay_engine.py): small chunks of every flow from one epoll set,
bulk back to the flow's pumps for splice(2). test_relay.py checks the relay's semantics
(half-close, timers, resets), which the engine carries; here what is the engine's own."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Awaitable, Callable

import pytest
import trio

from trio_tproxy import relay as relay_module
from trio_tproxy.relay import SPLICE_AFTER, BufferPool, RelayTimeouts, relay, send_all
from trio_tproxy.relay_engine import ENABLED, RelayEngine
from trio_tproxy.relay_stream import relay_stream
from trio_tproxy.splice import PipePool

from .outbound.fakes import recv_exactly
from .test_relay import Pairs, recv_until_eof, relay_setup

pytestmark = pytest.mark.skipif(not ENABLED, reason="TRIO_TPROXY_RELAY_ENGINE=off")

TIMEOUTS = RelayTimeouts(idle=30, uplink_only=5, downlink_only=5)


def spy_pumps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Record every pump the flow's task runs: (direction, bytes the engine moved)."""
    calls: list[tuple[str, int]] = []
    original = relay_module._Relay.pump

    async def pump(self: object, name: str, src: socket.socket, dst: socket.socket,  # noqa: PLR0917
                   then: float, moved: int = 0) -> None:  # fmt: skip
        calls.append((name, moved))
        await original(self, name, src, dst, then, moved)  # type: ignore[arg-type]

    monkeypatch.setattr(relay_module._Relay, "pump", pump)
    return calls


async def exchange(
    tcp_pairs: Pairs, request: bytes, response: bytes, pool: BufferPool, *,
    carry: Callable[[socket.socket, socket.socket], Awaitable[relay_module.RelayStats]]
    | None = None,
    seal: Callable[[bytes], bytes] = bytes,
    piece: int | None = None,
) -> tuple[bytes, bytes, relay_module.RelayStats]:  # fmt: skip
    """The client sends ``request`` and EOF, the server answers ``response`` (as
    ``seal`` puts it on the wire, in writes of ``piece`` bytes) and EOF; the flow is
    relayed by ``carry(proxy's client end, proxy's upstream end)`` (relay by default)."""
    client, pc, pu, server = relay_setup(tcp_pairs)
    got: dict[str, bytes] = {}

    async def client_side() -> None:
        await send_all(client, request)
        client.shutdown(socket.SHUT_WR)
        got["client"] = await recv_until_eof(client)

    async def server_side() -> None:
        got["server"] = await recv_until_eof(server)
        wire = seal(response)
        step = piece or len(wire) or 1
        for i in range(0, len(wire), step):
            await send_all(server, wire[i : i + step])
        server.shutdown(socket.SHUT_WR)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_side)
        nursery.start_soon(server_side)
        if carry is None:
            stats = await relay(pc, pu, TIMEOUTS, pool)
        else:
            stats = await carry(pc, pu)
    return got["server"], got["client"], stats


async def test_a_small_exchange_is_carried_by_the_engine_alone(
    tcp_pairs: Pairs, monkeypatch: pytest.MonkeyPatch
) -> None:
    pumps = spy_pumps(monkeypatch)
    request, response = b"GET / HTTP/1.1\r\n\r\n", os.urandom(20_000)
    server_got, client_got, stats = await exchange(
        tcp_pairs, request, response, BufferPool(65536, pipes=PipePool(4)))
    assert (server_got, client_got) == (request, response)
    assert (stats.up, stats.down, stats.outcome) == (len(request), len(response), "done")
    assert pumps == []  # no task of the flow moved a byte
    engine = RelayEngine.current(65536)
    assert engine is not None and not engine._by_fd and not engine._masks  # all let go


async def test_a_bulk_direction_goes_back_to_its_pump_for_splice(
    tcp_pairs: Pairs, monkeypatch: pytest.MonkeyPatch
) -> None:
    pumps = spy_pumps(monkeypatch)
    pipes = PipePool(4)
    request, response = b"x" * 100, os.urandom(3_000_000)
    server_got, client_got, stats = await exchange(
        tcp_pairs, request, response, BufferPool(65536, pipes=pipes))
    assert server_got == request
    assert hashlib.sha256(client_got).digest() == hashlib.sha256(response).digest()
    assert (stats.up, stats.down, stats.outcome) == (len(request), len(response), "done")
    # the uplink had ended in the engine; the downlink went on from where it was
    assert len(pumps) == 1 and pumps[0][0] == "downlink" and pumps[0][1] >= SPLICE_AFTER
    assert pipes.in_use == 0 and len(pipes._idle) == 1  # it spliced, and gave the pipe back
    pipes.close()


async def test_a_long_request_response_flow_stays_in_the_engine(
    tcp_pairs: Pairs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A keep-alive connection carries far more than SPLICE_AFTER in small messages:
    no receive ever fills the buffer, so it is not bulk and its pumps never run (a
    splice pump would cost two splices and a wake-up per message)."""
    pumps = spy_pumps(monkeypatch)
    client, pc, pu, server = relay_setup(tcp_pairs)
    request, response = b"GET /small HTTP/1.1\r\n\r\n", b"r" * 700
    rounds = SPLICE_AFTER // len(response) + 100  # the downlink carries > SPLICE_AFTER
    stats = None

    async def proxy() -> None:
        nonlocal stats
        stats = await relay(pc, pu, TIMEOUTS, BufferPool(65536, pipes=PipePool(4)))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(proxy)
            for _ in range(rounds):  # one message at a time, as a client and its server do
                await send_all(client, request)
                assert await recv_exactly(server, len(request)) == request
                await send_all(server, response)
                assert await recv_exactly(client, len(response)) == response
            client.shutdown(socket.SHUT_WR)
            server.shutdown(socket.SHUT_WR)
            assert await recv_until_eof(server) == b""
            assert await recv_until_eof(client) == b""
    assert stats is not None and stats.outcome == "done"
    assert (stats.up, stats.down) == (rounds * len(request), rounds * len(response))
    assert stats.down > SPLICE_AFTER
    assert pumps == []  # the engine carried every message


async def test_a_download_slower_than_the_engine_still_goes_to_splice(
    tcp_pairs: Pairs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paced download (a WAN link) never fills a receive, the engine being faster:
    large receives all the same, so it is bulk once it carried SPLICE_AFTER."""
    pumps = spy_pumps(monkeypatch)
    client, pc, pu, server = relay_setup(tcp_pairs)
    piece, pieces = os.urandom(16384), 64  # 1 MiB, a piece every 0.5 ms

    async def server_side() -> None:
        for _ in range(pieces):
            await send_all(server, piece)
            await trio.sleep(0.0005)
        server.shutdown(socket.SHUT_WR)

    async def client_side() -> None:
        client.shutdown(socket.SHUT_WR)
        assert await recv_until_eof(client) == piece * pieces

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server_side)
            nursery.start_soon(client_side)
            stats = await relay(pc, pu, TIMEOUTS, BufferPool(65536, pipes=PipePool(4)))
    assert stats.outcome == "done" and stats.down == len(piece) * pieces
    assert [name for name, _ in pumps] == ["downlink"]


async def test_a_bulk_flow_goes_to_splice_after_the_engine_buffer_grew(
    tcp_pairs: Pairs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload with a large policy.buffer_size grows the engine's buffer past what a
    socket ever queues: a bulk download still goes to splice."""
    pumps = spy_pumps(monkeypatch)
    assert RelayEngine.current(4 << 20) is not None  # a reload's 4 MiB buffers
    request, response = b"x" * 100, os.urandom(4_000_000)
    with trio.fail_after(30):
        _, client_got, stats = await exchange(
            tcp_pairs, request, response, BufferPool(65536, pipes=PipePool(4)))
    assert client_got == response and stats.outcome == "done"
    assert [name for name, _ in pumps] == ["downlink"]


async def test_a_slow_reader_gets_every_byte_in_order(tcp_pairs: Pairs) -> None:
    """Without splice the engine carries everything; what the receiver cannot take yet
    is held aside and the sender is not read meanwhile (back-pressure, bounded memory)."""
    client, pc, pu, server = relay_setup(tcp_pairs)
    data = os.urandom(4_000_000)
    received = bytearray()

    async def slow_server() -> None:
        while True:
            try:
                chunk = server.recv(32768)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(server)
                continue
            if not chunk:
                break
            received.extend(chunk)
            await trio.sleep(0.001)
        server.shutdown(socket.SHUT_WR)

    async def sender() -> None:
        await send_all(client, data)
        client.shutdown(socket.SHUT_WR)
        await recv_until_eof(client)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_server)
        nursery.start_soon(sender)
        stats = await relay(pc, pu, TIMEOUTS, BufferPool(65536))
    assert hashlib.sha256(received).digest() == hashlib.sha256(data).digest()
    assert (stats.up, stats.outcome) == (len(data), "done")


async def test_cancelling_a_flow_takes_it_out_of_the_set(tcp_pairs: Pairs) -> None:
    _client, pc, pu, _server = relay_setup(tcp_pairs)
    with trio.move_on_after(0.2):
        await relay(pc, pu, TIMEOUTS, BufferPool(4096))
    engine = RelayEngine.current(4096)
    assert engine is not None and not engine._by_fd and not engine._masks


async def test_a_broken_upstream_resets_the_client(tcp_pairs: Pairs) -> None:
    client, pc, pu, server = relay_setup(tcp_pairs)
    await send_all(client, b"hello")
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    async def reset_soon() -> None:
        await trio.sleep(0.05)
        server.close()  # RST

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reset_soon)
        stats = await relay(pc, pu, TIMEOUTS, BufferPool(4096))
    assert stats.outcome.startswith(("downlink error", "uplink error")), stats.outcome


# -- a codec's flow (relay_engine.Codec): an upstream whose bytes are transformed ------


class XorFrames:
    """A toy cipher with a shadowsocks-like shape: each write becomes frames of a
    2-byte length and the payload XOR-ed with KEY; a frame is opened only once whole,
    so the codec's receives and its plaintext do not line up."""

    KEY = 0x5A
    MAX = 1000  # payload per frame: a 64 KiB chunk is many frames

    def __init__(self, sock: socket.socket, answer_by: float = float("inf")) -> None:
        self.sock = sock
        self.answered = False
        self._answer_by = answer_by
        self._in = bytearray()
        self._room = bytearray(4096)
        self.rests = 0

    @classmethod
    def seal(cls, data: bytes) -> bytes:
        out = bytearray()
        for i in range(0, len(data), cls.MAX):
            chunk = data[i : i + cls.MAX]
            out += len(chunk).to_bytes(2, "big") + bytes(b ^ cls.KEY for b in chunk)
        return bytes(out)

    @classmethod
    def open(cls, wire: bytes) -> bytes:
        """All frames of ``wire``, opened (they must be whole)."""
        plain, pos = bytearray(), 0
        while pos < len(wire):
            size = int.from_bytes(wire[pos : pos + 2], "big")
            plain += bytes(b ^ cls.KEY for b in wire[pos + 2 : pos + 2 + size])
            pos += 2 + size
        return bytes(plain)

    def wire_size(self, n: int) -> int:
        return n + 2 * -(-n // self.MAX)

    def encode_into(self, data: memoryview, out: memoryview) -> int:
        wire = self.seal(bytes(data))
        out[: len(wire)] = wire
        return len(wire)

    def inbox(self) -> memoryview:
        return memoryview(self._room)

    def decode(self, n: int) -> memoryview:
        self._in += self._room[:n]
        plain = bytearray()
        while len(self._in) >= 2:
            size = int.from_bytes(self._in[:2], "big")
            if size > self.MAX:
                raise OSError(0, "tampered frame")
            if len(self._in) < 2 + size:
                break
            plain += bytes(b ^ self.KEY for b in self._in[2 : 2 + size])
            del self._in[: 2 + size]
        if plain:
            self.answered = True
        return memoryview(bytes(plain))

    def at_eof(self) -> None:
        if not self.answered:
            raise OSError(0, "closed before any answer")

    def read_failed(self, exc: OSError) -> OSError:
        return exc

    def rest(self) -> None:
        self.rests += 1

    def answer_by(self) -> float:
        return self._answer_by

    def unanswered(self) -> OSError | None:
        return None if self.answered else OSError(0, "no answer in time")


class CodecStream:
    """A ByteStream offering the codec; its own methods (the pumps' way, once a flow
    turned bulk) speak the same frames and count their calls."""

    def __init__(self, codec: XorFrames) -> None:
        self.codec = codec
        self.closed: bool | None = None  # reset?
        self.pumped = 0

    async def engine_codec(self, client: socket.socket, count: Callable[[int], None]) -> XorFrames:
        await trio.lowlevel.checkpoint()
        return self.codec

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.pumped += 1
        await send_all(self.codec.sock, XorFrames.seal(bytes(data)))

    async def receive_some(self, max_bytes: int) -> memoryview:
        self.pumped += 1
        while True:
            inbox = self.codec.inbox()
            try:
                n = self.codec.sock.recv_into(inbox)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.codec.sock)
                continue
            if n == 0:
                return memoryview(b"")
            if plain := self.codec.decode(n):
                return plain

    async def send_eof(self) -> None:
        self.codec.sock.shutdown(socket.SHUT_WR)
        await trio.lowlevel.checkpoint()

    def close(self, *, reset: bool = False) -> None:
        self.closed = reset
        self.codec.sock.close()


async def test_a_codec_flow_is_sealed_and_opened_by_the_engine(tcp_pairs: Pairs) -> None:
    request, response = os.urandom(300_000), os.urandom(500_000)
    streams: list[CodecStream] = []

    async def carry(pc: socket.socket, pu: socket.socket) -> relay_module.RelayStats:
        streams.append(CodecStream(XorFrames(pu)))
        return await relay_stream(pc, streams[0], TIMEOUTS,  # type: ignore[arg-type]
                                               pool=BufferPool(65536))  # fmt: skip

    # odd pieces: the server's frames are split across receives
    server_got, client_got, stats = await exchange(
        tcp_pairs, request, response, BufferPool(65536), carry=carry, seal=XorFrames.seal,
        piece=777)
    stream = streams[0]
    assert XorFrames.open(server_got) == request  # sealed per receive, intact
    assert client_got == response
    assert (stats.up, stats.down, stats.outcome) == (len(request), len(response), "done")
    assert stream.closed is False  # closed cleanly, not reset
    assert stream.pumped > 0  # bulk: the stream's pumps took over from the engine
    engine = RelayEngine.current(65536)
    assert engine is not None and not engine._by_fd and not engine._masks


async def test_a_short_codec_flow_is_carried_by_the_engine_alone(tcp_pairs: Pairs) -> None:
    request = os.urandom(100_000)
    streams: list[CodecStream] = []

    async def carry(pc: socket.socket, pu: socket.socket) -> relay_module.RelayStats:
        streams.append(CodecStream(XorFrames(pu)))
        return await relay_stream(pc, streams[0], TIMEOUTS)  # type: ignore[arg-type]

    server_got, client_got, _ = await exchange(tcp_pairs, request, b"ok", BufferPool(16384),
                                               carry=carry, seal=XorFrames.seal)  # fmt: skip
    assert XorFrames.open(server_got) == request
    assert server_got != XorFrames.seal(request)  # ... as the receives came, not whole
    assert client_got == b"ok"
    assert streams[0].pumped == 0  # no task of the flow moved a byte
    assert streams[0].codec.rests > 0  # the waiting flow gave its buffers back


@pytest.mark.parametrize(
    ("server_does", "outcome"),
    [
        ("silence", "downlink error: no answer in time"),
        ("garbage", "downlink error: tampered frame"),
        ("close", "downlink error: closed before any answer"),
    ],
)
async def test_a_codec_failure_resets_the_client_with_its_reason(
    tcp_pairs: Pairs, server_does: str, outcome: str
) -> None:
    client, pc, pu, server = relay_setup(tcp_pairs)
    stream = CodecStream(XorFrames(pu, answer_by=trio.current_time() + 0.3))
    await send_all(client, b"hello")
    if server_does == "garbage":
        await send_all(server, b"\xff\xff" + b"x" * 10)
    elif server_does == "close":
        server.close()
    with trio.fail_after(5):
        stats = await relay_stream(pc, stream, TIMEOUTS)  # type: ignore[arg-type]
    pc.close()
    assert stats.outcome == outcome
    assert stream.closed is True  # reset
    with pytest.raises(ConnectionResetError):
        await recv_until_eof(client)


async def test_an_answered_codec_flow_has_no_deadline(tcp_pairs: Pairs) -> None:
    """The first answer lifts the deadline: a slow destination (a long poll) is left
    alone once the server has spoken."""
    client, pc, pu, server = relay_setup(tcp_pairs)
    stream = CodecStream(XorFrames(pu, answer_by=trio.current_time() + 0.3))
    await send_all(server, XorFrames.seal(b"first"))
    got: dict[str, bytes] = {}

    async def ends() -> None:
        await trio.sleep(0.6)  # past the deadline, in silence
        await send_all(server, XorFrames.seal(b" then more"))
        server.shutdown(socket.SHUT_WR)
        client.shutdown(socket.SHUT_WR)
        got["client"] = await recv_until_eof(client)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ends)
        stats = await relay_stream(pc, stream, TIMEOUTS)  # type: ignore[arg-type]
    assert stats.outcome == "done"
    assert got["client"] == b"first then more"


async def test_a_codec_flow_survives_the_engine_buffer_growing(tcp_pairs: Pairs) -> None:
    """A reload with a larger policy.buffer_size grows the engine's receive buffer
    while codec flows are in it: their chunks then seal into a larger wire buffer."""
    client, pc, pu, server = relay_setup(tcp_pairs)
    stream = CodecStream(XorFrames(pu))
    got: dict[str, bytes] = {}
    request = os.urandom(150_000)  # under the handoff: the engine carries it all

    async def ends() -> None:
        await send_all(client, b"small first")
        await trio.sleep(0.1)  # in the engine, sealed with the small buffers
        assert RelayEngine.current(262144) is not None  # a reload's larger buffers
        await send_all(client, request)
        client.shutdown(socket.SHUT_WR)
        got["server"] = await recv_until_eof(server)
        await send_all(server, XorFrames.seal(b"ok"))
        server.shutdown(socket.SHUT_WR)
        got["client"] = await recv_until_eof(client)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ends)
            stats = await relay_stream(pc, stream, TIMEOUTS,  # type: ignore[arg-type]
                                                    pool=BufferPool(16384))  # fmt: skip
    assert stats.outcome == "done"
    assert XorFrames.open(got["server"]) == b"small first" + request
    assert got["client"] == b"ok"
