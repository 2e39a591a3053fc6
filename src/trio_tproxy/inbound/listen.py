"""Binding a listening socket: what the inbounds' TCP and UDP listeners and the
``dns.listen`` listener share.

Each is dual stack on "::" and turns every failure into one SocketSetupError that
names the owner and the address, so ``run`` can print a single clear line.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Callable

from ..addr import IPAddress
from ..caps import bind_refusal
from ..config import Inbound
from ..sock import family_of
from .sockopt import SocketSetupError

BACKLOG = 4096  # TCP: the kernel caps it at net.core.somaxconn

Prepare = Callable[[socket.socket, int], None]


def open_listening_socket(
    ip: IPAddress,
    port: int,
    sock_type: int,
    *,
    owner: str,
    where: str,
    prepare: Prepare | None = None,
    backlog: int = BACKLOG,
) -> socket.socket:
    """Create, ``prepare(sock, family)``, bind (and listen for TCP), non-blocking.

    TCP gets SO_REUSEADDR (a restart must not wait for TIME_WAIT); errors read
    "``owner``: cannot listen on ``where``: reason".
    """
    family = family_of(ip)
    sock = socket.socket(family, sock_type)
    try:
        if sock_type == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            # "::" serves IPv4 too (as ::ffff:a.b.c.d), whatever net.ipv6.bindv6only says
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if prepare is not None:
            prepare(sock, family)
        sock.bind((str(ip), port))
        if sock_type == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
    except SocketSetupError as exc:
        sock.close()
        raise SocketSetupError(exc.errno, f"{owner} ({where}): {exc}") from None
    except OSError as exc:
        sock.close()
        if refusal := bind_refusal(exc.errno or 0, port):  # EACCES below 1024: a capability
            raise SocketSetupError(exc.errno, f"{owner} ({where}): {refusal}") from None
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise SocketSetupError(exc.errno, f"{owner}: cannot listen on {where}: {reason}") from None
    return sock


def open_inbound_socket(
    inbound: Inbound, sock_type: int, prepare: Prepare, *, reuseport: bool = False
) -> socket.socket:
    """An inbound's listening socket; UDP ones get SO_REUSEADDR as TCP does.

    ``reuseport``: one of several sockets on the same address, one per worker process
    (SO_REUSEPORT): the kernel spreads connections and UDP clients over them by a hash
    of the addresses, so one client's datagrams keep reaching the same worker."""
    ip = ipaddress.ip_address(inbound.listen)
    kind = "tcp" if sock_type == socket.SOCK_STREAM else "udp"
    where = f"{kind} {'[' + str(ip) + ']' if ip.version == 6 else ip}:{inbound.port}"

    def prepare_inbound(sock: socket.socket, family: int) -> None:
        if sock_type != socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        prepare(sock, family)

    owner = f"inbound {inbound.tag!r}"
    return open_listening_socket(
        ip, inbound.port, sock_type, owner=owner, where=where, prepare=prepare_inbound
    )
