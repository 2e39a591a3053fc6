"""relay_stream: a client socket relayed over an upstream that transforms bytes (as
Shadowsocks and Trojan do), with relay()'s half-close, error and timer semantics."""

from __future__ import annotations

import socket

import trio

from trio_tproxy.relay import RelayTimeouts
from trio_tproxy.relay_stream import relay_stream


class XorStream:
    """A toy cipher over a socket pair end: every byte XOR 0x5A, to prove the relay
    moves what the stream decodes, not the wire bytes."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = trio.socket.from_stdlib_socket(sock)
        self.closed_with: bool | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        out = bytes(b ^ 0x5A for b in bytes(data))
        while out:
            sent = await self.sock.send(out)
            out = out[sent:]

    async def receive_some(self, max_bytes: int) -> bytes:
        data = await self.sock.recv(max_bytes)
        return bytes(b ^ 0x5A for b in data)

    async def send_eof(self) -> None:
        self.sock.shutdown(socket.SHUT_WR)

    def close(self, *, reset: bool = False) -> None:
        self.closed_with = reset
        self.sock.close()


def pair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def test_both_directions_decoded_and_half_close_passed_on() -> None:
    app, client = pair()
    wire, server = pair()
    stream = XorStream(wire)
    app_t = trio.socket.from_stdlib_socket(app)
    server_t = trio.socket.from_stdlib_socket(server)
    async with trio.open_nursery() as nursery:
        result: list[object] = []

        async def run() -> None:
            result.append(await relay_stream(client, stream, RelayTimeouts(idle=5)))

        nursery.start_soon(run)
        await app_t.send(b"hello")
        assert await server_t.recv(100) == bytes(b ^ 0x5A for b in b"hello")
        app_t.shutdown(socket.SHUT_WR)
        assert await server_t.recv(100) == b""  # the client's EOF reached the server
        await server_t.send(bytes(b ^ 0x5A for b in b"world"))
        assert await app_t.recv(100) == b"world"  # still flowing the other way
        server_t.shutdown(socket.SHUT_WR)
        assert await app_t.recv(100) == b""
    stats = result[0]
    assert (stats.up, stats.down, stats.outcome) == (5, 5, "done")  # type: ignore[attr-defined]
    assert stream.closed_with is False
    client.close()


async def test_a_broken_upstream_resets_and_says_why() -> None:
    app, client = pair()
    wire, server = pair()
    stream = XorStream(wire)
    server.close()  # the upstream is gone
    app_t = trio.socket.from_stdlib_socket(app)
    await app_t.send(b"x" * 10)
    stats = await relay_stream(client, stream, RelayTimeouts(idle=5))
    assert "error" in stats.outcome
    assert stream.closed_with is True


async def test_idle_timeout(autojump_clock: trio.testing.MockClock) -> None:
    _app, client = pair()
    wire, _server = pair()
    stream = XorStream(wire)
    start = trio.current_time()
    stats = await relay_stream(client, stream, RelayTimeouts(idle=30))
    assert stats.outcome == "idle timeout"
    assert 30 <= trio.current_time() - start < 31
