"""Binding an inbound's socket: the part TCP and UDP listeners share.

Both are dual stack on "::" and both turn every failure into one SocketSetupError that
names the inbound and the address, so ``run`` can print a single clear line.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable

from ..caps import bind_refusal
from ..config import Inbound
from ..sock import family_of
from .sockopt import SocketSetupError

BACKLOG = 4096  # TCP: the kernel caps it at net.core.somaxconn


def open_inbound_socket(
    inbound: Inbound, sock_type: int, prepare: Callable[[socket.socket, int], None]
) -> socket.socket:
    """Create, ``prepare(sock, family)``, bind (and listen for TCP), non-blocking."""
    ip = ipaddress.ip_address(inbound.listen)
    family = family_of(ip)
    sock = socket.socket(family, sock_type)
    kind = "tcp" if sock_type == socket.SOCK_STREAM else "udp"
    where = f"{kind} {'[' + str(ip) + ']' if ip.version == 6 else ip}:{inbound.port}"
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "::" serves IPv4 too (as ::ffff:a.b.c.d), whatever net.ipv6.bindv6only says
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        prepare(sock, family)
        sock.bind((str(ip), inbound.port))
        if sock_type == socket.SOCK_STREAM:
            sock.listen(BACKLOG)
        sock.setblocking(False)
    except SocketSetupError as exc:
        sock.close()
        raise SocketSetupError(exc.errno, f"inbound {inbound.tag!r} ({where}): {exc}") from None
    except OSError as exc:
        sock.close()
        if refusal := bind_refusal(exc.errno or 0, inbound.port):
            message = f"inbound {inbound.tag!r} ({where}): {refusal}"
            raise SocketSetupError(exc.errno, message) from None
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise SocketSetupError(
            exc.errno, f"inbound {inbound.tag!r}: cannot listen on {where}: {reason}"
        ) from None
    return sock
