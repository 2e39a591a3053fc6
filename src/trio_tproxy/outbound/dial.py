"""Opening upstream TCP connections: marked, non-blocking, bounded by the handshake timeout."""

from __future__ import annotations

import errno
import os
import socket

import trio

from ..inbound.sockopt import SockAddr, addr_to_sockaddr, family_of, set_mark


class DialError(OSError):
    """An upstream connection could not be opened; ``str()`` is a complete log message."""


def close_socket(sock: socket.socket) -> None:
    """Close a socket that trio may be waiting on (wakes any waiter with an error)."""
    if sock.fileno() >= 0:
        trio.lowlevel.notify_closing(sock)
        sock.close()


async def open_tcp(addr: SockAddr, *, mark: int, timeout: float) -> socket.socket:  # noqa: ASYNC109
    """Connect to ``addr`` with SO_MARK set before the SYN leaves (so it skips diversion)."""
    family = family_of(addr[0])
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        set_mark(sock, mark)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(addr_to_sockaddr(addr, family))
        if err == errno.EINPROGRESS:
            with trio.move_on_after(timeout) as scope:
                await trio.lowlevel.wait_writable(sock)
            if scope.cancelled_caught:
                raise DialError(errno.ETIMEDOUT, f"connect to {_show(addr)} timed out")
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise DialError(err, f"connect to {_show(addr)} failed: {os.strerror(err)}")
    except BaseException:
        close_socket(sock)
        raise
    return sock


def _show(addr: SockAddr) -> str:
    ip, port = addr
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"
