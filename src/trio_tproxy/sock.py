"""Socket helpers every I/O part shares: a leaf beside :mod:`.addr`, which it alone uses."""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from ipaddress import IPv4Address

import trio

from .addr import IPAddress, SockAddr, unmap


def sockaddr_to_addr(sockaddr: tuple[object, ...]) -> SockAddr:
    host = str(sockaddr[0]).split("%", 1)[0]  # drop an IPv6 scope id
    port = sockaddr[1]
    assert isinstance(port, int)
    return unmap(ipaddress.ip_address(host)), port


def addr_to_sockaddr(addr: SockAddr, family: int) -> tuple[str, int]:
    ip, port = addr
    if family == socket.AF_INET6 and isinstance(ip, IPv4Address):
        return f"::ffff:{ip}", port
    return str(ip), port


def family_of(ip: IPAddress) -> int:
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


def close_socket(sock: socket.socket) -> None:
    """Close a socket that trio may be waiting on (wakes any waiter with an error)."""
    if sock.fileno() >= 0:
        trio.lowlevel.notify_closing(sock)
        sock.close()


def set_reset_on_close(sock: socket.socket) -> None:
    """SO_LINGER {on, 0}: close() sends RST instead of FIN (a prompt, honest failure)."""
    # the socket may already be dead; close() will do what it can
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
