"""The relay over real loopback TCP sockets: bytes, half-close, timers, resets."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable

import pytest
import trio
import trio.testing

from trio_tproxy.relay import BufferPool, RelayTimeouts, relay, send_all
from trio_tproxy.splice import PipePool

Pairs = Callable[[], tuple[socket.socket, socket.socket]]


async def recv_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def relay_setup(tcp_pairs: Pairs) -> tuple[socket.socket, socket.socket, socket.socket, socket.socket]:
    """client <-> (proxy_client ... proxy_upstream) <-> server"""
    client, proxy_client = tcp_pairs()
    proxy_upstream, server = tcp_pairs()
    return client, proxy_client, proxy_upstream, server


@pytest.mark.parametrize("splice", [False, True], ids=["userspace", "splice"])
async def test_both_directions_with_half_close(tcp_pairs: Pairs, splice: bool) -> None:
    pipes = PipePool(4) if splice else None
    client, pc, pu, server = relay_setup(tcp_pairs)
    request = os.urandom(3_000_000)
    response = os.urandom(5_000_000)

    async def client_side() -> bytes:
        await send_all(client, request)
        client.shutdown(socket.SHUT_WR)  # half-close: we still expect the whole response
        return await recv_until_eof(client)

    async def server_side() -> bytes:
        got = await recv_until_eof(server)  # the client's FIN must arrive as EOF
        await send_all(server, response)
        server.shutdown(socket.SHUT_WR)
        return got

    results: dict[str, bytes] = {}

    async def run(name: str, fn: Callable[[], object]) -> None:
        results[name] = await fn()  # type: ignore[misc]

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run, "client", client_side)
        nursery.start_soon(run, "server", server_side)
        stats = await relay(pc, pu, RelayTimeouts(idle=30, uplink_only=5, downlink_only=5),
                            BufferPool(65536, pipes=pipes))  # fmt: skip
    assert hashlib.sha256(results["server"]).digest() == hashlib.sha256(request).digest()
    assert hashlib.sha256(results["client"]).digest() == hashlib.sha256(response).digest()
    assert (stats.up, stats.down, stats.outcome) == (len(request), len(response), "done")
    if pipes is not None:  # the directions went zero-copy (one after the other here:
        # the uplink's pipe, empty, was reused by the downlink) and gave it back
        assert (pipes.in_use, len(pipes._idle)) == (0, 1)
        pipes.close()


async def test_splice_pool_exhausted_falls_back_to_userspace(tcp_pairs: Pairs) -> None:
    pipes = PipePool(0)
    client, pc, pu, server = relay_setup(tcp_pairs)
    data = os.urandom(1_000_000)

    async def send_then_close() -> None:
        await send_all(client, data)
        client.shutdown(socket.SHUT_WR)

    received: list[bytes] = []

    async def receive() -> None:
        received.append(await recv_until_eof(server))
        server.shutdown(socket.SHUT_WR)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_then_close)
        nursery.start_soon(receive)
        stats = await relay(pc, pu, RelayTimeouts(idle=30), BufferPool(4096, pipes=pipes))
    assert received == [data]
    assert stats.up == len(data)


async def test_idle_timeout(tcp_pairs: Pairs, autojump_clock: trio.testing.MockClock) -> None:
    _client, pc, pu, _server = relay_setup(tcp_pairs)
    start = trio.current_time()
    stats = await relay(pc, pu, RelayTimeouts(idle=300), BufferPool(4096))
    assert stats.outcome == "idle timeout"
    assert trio.current_time() - start == pytest.approx(300)


async def test_activity_refreshes_idle_timer(
    tcp_pairs: Pairs, autojump_clock: trio.testing.MockClock
) -> None:
    client, pc, pu, server = relay_setup(tcp_pairs)

    async def chatter() -> None:
        for _ in range(5):
            await trio.sleep(200)  # each gap is below the 300 s idle timeout
            await send_all(client, b"ping")
        client.shutdown(socket.SHUT_WR)
        server.shutdown(socket.SHUT_WR)

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(chatter)
        stats = await relay(pc, pu, RelayTimeouts(idle=300), BufferPool(4096))
    assert stats.outcome == "done"
    assert stats.up == 20
    assert trio.current_time() - start == pytest.approx(1000)


async def test_downlink_only_after_client_finished(
    tcp_pairs: Pairs, autojump_clock: trio.testing.MockClock
) -> None:
    client, pc, pu, _server = relay_setup(tcp_pairs)
    client.shutdown(socket.SHUT_WR)  # the client is done; the server never answers
    start = trio.current_time()
    stats = await relay(pc, pu, RelayTimeouts(idle=300, downlink_only=2), BufferPool(4096))
    assert stats.outcome == "half-closed timeout"
    assert trio.current_time() - start == pytest.approx(2)


async def test_uplink_only_after_server_finished(
    tcp_pairs: Pairs, autojump_clock: trio.testing.MockClock
) -> None:
    _client, pc, pu, server = relay_setup(tcp_pairs)
    server.shutdown(socket.SHUT_WR)
    start = trio.current_time()
    stats = await relay(pc, pu, RelayTimeouts(idle=300, uplink_only=3), BufferPool(4096))
    assert stats.outcome == "half-closed timeout"
    assert trio.current_time() - start == pytest.approx(3)


async def test_server_reset_resets_client(tcp_pairs: Pairs) -> None:
    import struct

    client, pc, pu, server = relay_setup(tcp_pairs)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    server.close()  # RST towards the proxy
    stats = await relay(pc, pu, RelayTimeouts(idle=30), BufferPool(4096))
    assert stats.outcome.startswith("downlink error")
    pc.close()
    pu.close()
    with pytest.raises(ConnectionResetError):
        with trio.fail_after(5):
            while True:
                try:
                    if client.recv(100) == b"":
                        pytest.fail("the client saw a clean FIN instead of a reset")
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(client)


async def test_cancellation_ends_relay_promptly(tcp_pairs: Pairs) -> None:
    _client, pc, pu, _server = relay_setup(tcp_pairs)
    with trio.move_on_after(0.2) as scope:
        await relay(pc, pu, RelayTimeouts(idle=300), BufferPool(4096))
    assert scope.cancelled_caught


def test_buffer_pool_bounds_retained_buffers() -> None:
    pool = BufferPool(1024, keep=2)
    bufs = [pool.acquire() for _ in range(5)]
    for b in bufs:
        pool.release(b)
    assert len(pool._free) == 2
    assert pool.acquire() is bufs[1]



def test_buffer_pool_keeps_at_most_a_mebibyte_of_default_buffers() -> None:
    """After a burst of blocked sends, what stays allocated for the process's life."""
    pool = BufferPool(65536)
    bufs = [pool.acquire() for _ in range(100)]
    for b in bufs:
        pool.release(b)
    assert len(pool._free) * 65536 <= 1 << 20
