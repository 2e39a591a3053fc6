"""The relay engine (relay_engine.py): small chunks of every flow from one epoll set,
bulk back to the flow's pumps for splice(2). test_relay.py checks the relay's semantics
(half-close, timers, resets), which the engine carries; here what is the engine's own."""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Callable

import pytest
import trio

from trio_tproxy import relay as relay_module
from trio_tproxy.relay import SPLICE_AFTER, BufferPool, RelayTimeouts, relay, send_all
from trio_tproxy.relay_engine import ENABLED, RelayEngine
from trio_tproxy.splice import PipePool

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
    tcp_pairs: Pairs, request: bytes, response: bytes, pool: BufferPool,
    server_reads: Callable[[socket.socket], object] | None = None,
) -> tuple[bytes, bytes, relay_module.RelayStats]:  # fmt: skip
    client, pc, pu, server = relay_setup(tcp_pairs)
    got: dict[str, bytes] = {}

    async def client_side() -> None:
        await send_all(client, request)
        client.shutdown(socket.SHUT_WR)
        got["client"] = await recv_until_eof(client)

    async def server_side() -> None:
        got["server"] = await recv_until_eof(server)
        await send_all(server, response)
        server.shutdown(socket.SHUT_WR)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client_side)
        nursery.start_soon(server_side)
        stats = await relay(pc, pu, TIMEOUTS, pool)
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
