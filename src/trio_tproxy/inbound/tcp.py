"""TCP listeners of the ``tproxy`` and ``redirect`` inbounds, and their accept loop.

tproxy: the listener has IP_TRANSPARENT, so the kernel hands it connections addressed to
any IP; the accepted socket's local address *is* the original destination (v2ray:
``conn.LocalAddr()``). redirect: NAT rewrote the destination to us; the original one is
read back with SO_ORIGINAL_DST.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Awaitable, Callable

import trio

from ..addr import SockAddr
from ..config import Inbound, RedirectInbound
from ..sock import sockaddr_to_addr
from .listen import open_inbound_socket
from .sockopt import redirect_original_dst, set_transparent

log = logging.getLogger("trio_tproxy.inbound")

# accept() errors that concern one connection that died in the queue, not the listener:
# Linux accept(2) reports the pending network error of such a connection (accept(2),
# "Error handling"), and netfilter may deny it (EPERM). Skip it and accept the next.
_TRANSIENT_ACCEPT = {
    errno.ECONNABORTED, errno.ECONNRESET, errno.EPROTO, errno.EPERM, errno.ENETDOWN,
    errno.ENOPROTOOPT, errno.EHOSTDOWN, errno.ENONET, errno.EHOSTUNREACH,
    errno.EOPNOTSUPP, errno.ENETUNREACH, errno.ETIMEDOUT, errno.EINTR,
}  # fmt: skip
_OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
FD_BACKOFF = 0.1  # seconds to wait before accepting again when out of file descriptors
# An errno nobody expected: logged once, then accepting goes on after this pause (so a
# listener that fails every time cannot spin the CPU).
UNEXPECTED_BACKOFF = 0.1
# Connections accepted back to back before the flows get the CPU: accepting until
# EAGAIN costs no wake-up per connection under a burst, and the bound keeps a flood
# from starving the flows already running.
ACCEPT_BATCH = 32

ConnectionHandler = Callable[[socket.socket, SockAddr, SockAddr], Awaitable[None]]


def open_tcp_listener(inbound: Inbound, *, reuseport: bool = False) -> socket.socket:
    """Create, bind and listen; every failure becomes one clear SocketSetupError."""

    def prepare(sock: socket.socket, family: int) -> None:
        if not isinstance(inbound, RedirectInbound):
            set_transparent(sock, family)
        # Accepted sockets inherit TCP_NODELAY from the listener (Linux clones the
        # listening sock): one setsockopt here instead of one per flow.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    return open_inbound_socket(inbound, socket.SOCK_STREAM, prepare, reuseport=reuseport)


def original_dst_of(inbound: Inbound) -> Callable[[socket.socket], SockAddr]:
    if isinstance(inbound, RedirectInbound):
        return redirect_original_dst
    return lambda conn: sockaddr_to_addr(conn.getsockname())


async def accept_loop(
    listener: socket.socket,
    inbound: Inbound,
    handler: ConnectionHandler,
    flows: trio.Nursery,
) -> None:
    """Accept until cancelled; each connection runs in ``flows`` (a longer-lived nursery).

    No accept() error stops the listener: a connection that died in the queue is
    skipped, running out of descriptors or memory pauses briefly, and an unexpected
    errno is logged (once per errno) before accepting goes on. ``listener`` is anything
    with the socket's ``accept()`` and ``fileno()`` (tests pass a stand-in).
    """
    original_dst = original_dst_of(inbound)
    warned_fds = False
    unexpected_logged: set[int | None] = set()
    batch = 0
    while True:
        if batch >= ACCEPT_BATCH:
            batch = 0
            await trio.lowlevel.checkpoint()
        try:
            conn, peer = listener.accept()
        except BlockingIOError:
            batch = 0
            await trio.lowlevel.wait_readable(listener)
            continue
        except OSError as exc:
            if exc.errno in _TRANSIENT_ACCEPT:
                continue
            if exc.errno in _OUT_OF_FDS:
                if not warned_fds:
                    log.error(
                        "inbound %s: cannot accept: %s (open file limit reached; new "
                        "connections wait in the kernel queue until flows end)",
                        inbound.tag, exc.strerror,
                    )  # fmt: skip
                    warned_fds = True
                await trio.sleep(FD_BACKOFF)
                continue
            if exc.errno not in unexpected_logged:
                unexpected_logged.add(exc.errno)
                log.error(
                    "inbound %s: unexpected accept() error %s: %s (still accepting)",
                    inbound.tag, errno.errorcode.get(exc.errno or 0, exc.errno),
                    exc.strerror or exc,
                )  # fmt: skip
            await trio.sleep(UNEXPECTED_BACKOFF)
            continue
        warned_fds = False
        conn.setblocking(False)
        try:
            dst = original_dst(conn)
        except OSError as exc:
            log.warning("inbound %s: no original destination for %s: %s", inbound.tag, peer, exc)
            conn.close()
            continue
        flows.start_soon(handler, conn, sockaddr_to_addr(peer), dst)
        batch += 1
