"""TCP listeners of the ``tproxy`` and ``redirect`` inbounds, and their accept loop.

tproxy: the listener has IP_TRANSPARENT, so the kernel hands it connections addressed to
any IP; the accepted socket's local address *is* the original destination (v2ray:
``conn.LocalAddr()``). redirect: NAT rewrote the destination to us; the original one is
read back with SO_ORIGINAL_DST.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable

import trio

from ..config import Inbound, RedirectInbound
from .sockopt import (
    SockAddr,
    SocketSetupError,
    family_of,
    redirect_original_dst,
    set_transparent,
    sockaddr_to_addr,
)

log = logging.getLogger("trio_tproxy.inbound")

BACKLOG = 4096  # the kernel caps it at net.core.somaxconn
# accept() errors that concern one connection that died in the queue, not the listener
_TRANSIENT_ACCEPT = {errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.ENETDOWN}
_OUT_OF_FDS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
FD_BACKOFF = 0.1  # seconds to wait before accepting again when out of file descriptors

ConnectionHandler = Callable[[socket.socket, SockAddr, SockAddr], Awaitable[None]]


def open_tcp_listener(inbound: Inbound) -> socket.socket:
    """Create, bind and listen; every failure becomes one clear SocketSetupError."""
    ip = ipaddress.ip_address(inbound.listen)
    family = family_of(ip)
    sock = socket.socket(family, socket.SOCK_STREAM)
    where = f"tcp {'[' + str(ip) + ']' if ip.version == 6 else ip}:{inbound.port}"
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "::" serves IPv4 too (as ::ffff:a.b.c.d), whatever net.ipv6.bindv6only says
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if not isinstance(inbound, RedirectInbound):
            set_transparent(sock, family)
        sock.bind((str(ip), inbound.port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except SocketSetupError as exc:
        sock.close()
        raise SocketSetupError(exc.errno, f"inbound {inbound.tag!r} ({where}): {exc}") from None
    except OSError as exc:
        sock.close()
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise SocketSetupError(
            exc.errno, f"inbound {inbound.tag!r}: cannot listen on {where}: {reason}"
        ) from None
    return sock


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
    """Accept until cancelled; each connection runs in ``flows`` (a longer-lived nursery)."""
    original_dst = original_dst_of(inbound)
    warned_fds = False
    while True:
        try:
            conn, peer = listener.accept()
        except BlockingIOError:
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
            raise
        warned_fds = False
        conn.setblocking(False)
        try:
            dst = original_dst(conn)
        except OSError as exc:
            log.warning("inbound %s: no original destination for %s: %s", inbound.tag, peer, exc)
            conn.close()
            continue
        flows.start_soon(handler, conn, sockaddr_to_addr(peer), dst)
        await trio.lowlevel.checkpoint()
