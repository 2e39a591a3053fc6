"""A TCP flow in the flow tracker: registered once routed, closed at once by the API's
DELETE (reset, not a clean end), unregistered with its outcome. Loopback only."""

from __future__ import annotations

import gc
import hashlib
import ipaddress
import socket
import types
from collections.abc import Callable

import trio
import trio.testing

from trio_tproxy.config import parse_config_text
from trio_tproxy.outbound import TcpFlow
from trio_tproxy.runtime import Runtime
from trio_tproxy.session import handle_tcp

Pairs = Callable[[], tuple[socket.socket, socket.socket]]
CONFIG = """
[log]
access = false
[[inbounds]]
tag = "in"
type = "tproxy"
port = 1
[[outbounds]]
tag = "direct"
type = "direct"
"""


async def test_a_running_download_is_tracked_and_closed(tcp_pairs: Pairs) -> None:
    rt = Runtime.build(parse_config_text(CONFIG))
    source = trio.socket.socket()
    await source.bind(("127.0.0.1", 0))
    source.listen()
    port = source.getsockname()[1]

    async def serve_forever() -> None:
        conn, _ = await source.accept()
        with conn:
            block = b"x" * 65536
            try:
                while True:
                    await conn.send(block)
            except ConnectionResetError:
                return  # the gateway reset the upstream side too

    client, conn = tcp_pairs()
    conn.setblocking(False)
    src = (ipaddress.ip_address("127.0.0.1"), client.getsockname()[1])
    dst = (ipaddress.ip_address("127.0.0.1"), port)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_forever)
        done = trio.Event()

        async def flow() -> None:
            await handle_tcp(rt, rt.config.inbounds[0], conn, src, dst)
            done.set()

        nursery.start_soon(flow)
        received = 0
        client.setblocking(False)
        with trio.fail_after(5):
            while received < 1_000_000:
                await trio.lowlevel.wait_readable(client)
                received += len(client.recv(65536))
        (tracked,) = list(rt.tracker)
        assert tracked.chain == ("direct",) and tracked.network == "tcp"
        assert tracked.counts.down >= received
        with trio.fail_after(2):
            assert rt.tracker.close(tracked.id)
            await done.wait()
        reset = False
        with trio.fail_after(2):
            while True:
                await trio.lowlevel.wait_readable(client)
                try:
                    if not client.recv(65536):
                        break
                except ConnectionResetError:
                    reset = True
                    break
        assert reset  # the client learns the flow was cut, not completed
        nursery.cancel_scope.cancel()
    assert list(rt.tracker) == []
    assert rt.tracker.ended_flows[("direct", "in", "tcp", "closed")] == 1
    assert rt.tracker.ended_down >= received
    client.close()
    source.close()


SNIFFING = CONFIG.replace('port = 1\n', 'port = 1\n[inbounds.sniffing]\nenabled = true\n')


def holders(digest: bytes) -> list[object]:
    """Live flows and coroutines (their frames' locals) holding bytes of this SHA-256."""
    return [
        o for o in gc.get_objects()
        if isinstance(o, (types.CoroutineType, TcpFlow))
        and any(type(r) is bytes and hashlib.sha256(r).digest() == digest
                for r in gc.get_referents(o))
    ]  # fmt: skip


async def test_an_idle_flow_keeps_none_of_its_sniffed_first_bytes(tcp_pairs: Pairs) -> None:
    """What was read while sniffing is sent upstream first, then let go: an idle flow
    holds no buffer (a ClientHello would be ~2 KB a flow)."""
    rt = Runtime.build(parse_config_text(SNIFFING))
    source = trio.socket.socket()
    await source.bind(("127.0.0.1", 0))
    source.listen()
    request = b"GET /idle HTTP/1.1\r\nHost: idle.example\r\nX-Pad: " + b"p" * 1500 + b"\r\n\r\n"
    size, digest = len(request), hashlib.sha256(request).digest()
    got = trio.Event()

    async def serve_silently() -> None:
        conn, _ = await source.accept()
        with conn:
            received = 0
            while received < size:
                received += len(await conn.recv(65536))
            got.set()
            await trio.sleep_forever()

    client, conn = tcp_pairs()
    conn.setblocking(False)
    src = (ipaddress.ip_address("127.0.0.1"), client.getsockname()[1])
    dst = (ipaddress.ip_address("127.0.0.1"), source.getsockname()[1])
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_silently)
        nursery.start_soon(handle_tcp, rt, rt.config.inbounds[0], conn, src, dst)
        client.sendall(request)
        del request  # only the gateway could hold it now
        with trio.fail_after(5):
            await got.wait()
        await trio.testing.wait_all_tasks_blocked()
        (tracked,) = list(rt.tracker)
        assert tracked.record.domain == "idle.example"  # sniffed, then relayed
        assert holders(digest) == []
        nursery.cancel_scope.cancel()
    client.close()
    source.close()
