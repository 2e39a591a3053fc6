"""Addresses and socket helpers every part shares: the bottom layer.

It imports nothing of ours, so anything may import it. Two spellings of an address
exist on purpose: a :data:`SockAddr` (an ``ipaddress`` object and a port) is what the
TCP path and routing reason about; an :data:`Endpoint` (text and port) is what the UDP
path passes to the kernel millions of times, where parsing into objects would cost.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import struct
from ipaddress import IPv4Address, IPv6Address

import trio

IPAddress = IPv4Address | IPv6Address
SockAddr = tuple[IPAddress, int]
# A UDP address as the socket module spells it: ("203.0.113.5", 443) or ("2001:db8::1", 53).
Endpoint = tuple[str, int]


def unmap(ip: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` (what a dual-stack socket reports for IPv4) -> ``a.b.c.d``."""
    if type(ip) is IPv6Address and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def show(addr: SockAddr | Endpoint) -> str:
    """``1.2.3.4:80`` or ``[2001:db8::1]:80``, for logs."""
    host, port = addr
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


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
