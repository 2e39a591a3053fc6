"""The accept loop survives every accept() error and goes on accepting."""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Callable

import trio
import trio.testing

from trio_tproxy.config import RedirectInbound
from trio_tproxy.config.schema import IpAddressText, Port
from trio_tproxy.inbound.sockopt import SockAddr
from trio_tproxy.inbound.tcp import ACCEPT_BATCH, accept_loop, open_tcp_listener

from .test_session import runtime

Pairs = Callable[[], tuple[socket.socket, socket.socket]]
ERRNOS = [
    errno.ENETDOWN, errno.EPROTO, errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET,
    errno.EHOSTUNREACH, errno.EOPNOTSUPP, errno.ENETUNREACH, errno.ECONNRESET,
    errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPERM, errno.EMFILE, errno.ENFILE,
    errno.ENOBUFS, errno.ENOMEM, errno.EINVAL, errno.EBADF,
]  # fmt: skip


class FakeListener:
    """Raises each errno once, then hands out one real connection, then blocks."""

    def __init__(self, conn: socket.socket, idle: socket.socket) -> None:
        self.errors = list(ERRNOS)
        self.conn: socket.socket | None = conn
        self.idle = idle

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, "injected")
        if self.conn is not None:
            conn, self.conn = self.conn, None
            return conn, conn.getpeername()
        raise BlockingIOError

    def fileno(self) -> int:
        return self.idle.fileno()  # never readable: the loop waits


async def test_accept_loop_survives_every_errno(
    tcp_pairs: Pairs, autojump_clock: trio.testing.MockClock
) -> None:
    _, conn = tcp_pairs()
    idle, _ = tcp_pairs()
    inbound = runtime().config.inbounds[0]
    got: list[SockAddr] = []

    async def handler(c: socket.socket, src: SockAddr, dst: SockAddr) -> None:
        got.append(dst)

    async with trio.open_nursery() as flows:
        flows.start_soon(accept_loop, FakeListener(conn, idle), inbound, handler, flows)  # type: ignore[arg-type]
        await trio.sleep(10)
        assert len(got) == 1
        flows.cancel_scope.cancel()


class BurstListener:
    """Hands out ``count`` connections back to back, then blocks."""

    def __init__(self, count: int, idle: socket.socket) -> None:
        self.left = count
        self.accepted = 0
        self.idle = idle

    def accept(self) -> tuple[socket.socket, tuple[str, int]]:
        if not self.left:
            raise BlockingIOError
        self.left -= 1
        self.accepted += 1
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM), ("192.0.2.1", 1000)

    def fileno(self) -> int:
        return self.idle.fileno()


async def test_a_burst_is_accepted_in_batches(tcp_pairs: Pairs) -> None:
    """No wake-up per connection, but no starving the running flows either."""
    idle, _ = tcp_pairs()
    inbound = runtime().config.inbounds[0]
    listener = BurstListener(3 * ACCEPT_BATCH, idle)
    seen_by_others: list[int] = []

    async def handler(c: socket.socket, src: SockAddr, dst: SockAddr) -> None:
        seen_by_others.append(listener.accepted)
        c.close()

    async with trio.open_nursery() as flows:
        flows.start_soon(accept_loop, listener, inbound, handler, flows)  # type: ignore[arg-type]
        await trio.testing.wait_all_tasks_blocked()
        flows.cancel_scope.cancel()
    assert len(seen_by_others) == 3 * ACCEPT_BATCH
    # the first flows ran once a batch was accepted, before the rest of the burst: in
    # the next scheduler batch, which trio runs in reverse half of the time (the accept
    # loop's next batch first, then the flows): so after one batch or two, never three
    assert seen_by_others[0] in (ACCEPT_BATCH, 2 * ACCEPT_BATCH)


def test_accepted_sockets_inherit_tcp_nodelay() -> None:
    """The listener carries TCP_NODELAY so that no flow needs a setsockopt of its own."""
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    inbound = RedirectInbound(tag="lan", port=Port(port), listen=IpAddressText("127.0.0.1"))
    listener = open_tcp_listener(inbound)
    try:
        client = socket.create_connection(("127.0.0.1", port))
        trio_conn = None
        for _ in range(100):
            try:
                trio_conn, _peer = listener.accept()
                break
            except BlockingIOError:
                time.sleep(0.01)
        assert trio_conn is not None
        assert trio_conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        trio_conn.close()
        client.close()
    finally:
        listener.close()
