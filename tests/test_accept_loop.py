"""The accept loop survives every accept() error and goes on accepting."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

import trio
import trio.testing

from trio_tproxy.inbound.sockopt import SockAddr
from trio_tproxy.inbound.tcp import accept_loop

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
