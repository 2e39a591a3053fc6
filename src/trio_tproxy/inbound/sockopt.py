"""Linux socket options of transparent proxying, and address helpers.

Python's socket module lacks most of these constants; the values are from the kernel
UAPI headers (linux/in.h, linux/in6.h, linux/netfilter_ipv4.h, asm-generic/socket.h).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

from ..addr import IPAddress, SockAddr, unmap
from ..caps import CAP_NET_ADMIN, missing_line
from ..sock import family_of, sockaddr_to_addr

IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
IP_RECVORIGDSTADDR = getattr(socket, "IP_RECVORIGDSTADDR", 20)
IPV6_RECVORIGDSTADDR = 74
SO_MARK = getattr(socket, "SO_MARK", 36)
SO_ORIGINAL_DST = 80  # netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST (netfilter_ipv6) is also 80
IP6T_SO_ORIGINAL_DST = 80


class SocketSetupError(OSError):
    """A socket option we depend on was refused; the message says what to do about it."""


def set_mark(sock: socket.socket, mark: int) -> None:
    """SO_MARK, so our own packets skip the diversion rules (needs CAP_NET_ADMIN)."""
    if not mark:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    except PermissionError as exc:
        raise SocketSetupError(exc.errno, missing_line(CAP_NET_ADMIN, [f"SO_MARK={mark}"])) from exc


def set_transparent(sock: socket.socket, family: int) -> None:
    """IP_TRANSPARENT (and IPV6_TRANSPARENT): accept/bind for non-local addresses."""
    try:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    except PermissionError as exc:
        raise SocketSetupError(exc.errno, missing_line(CAP_NET_ADMIN, ["IP_TRANSPARENT"])) from exc


def redirect_original_dst(sock: socket.socket) -> SockAddr:
    """The pre-NAT destination of a REDIRECTed TCP connection (SO_ORIGINAL_DST).

    IPv4 flows on a dual-stack socket answer at SOL_IP (the kernel routes SOL_IP
    getsockopt of AF_INET6 sockets to the IPv4 code, which uses the mapped address);
    IPv6 flows answer at SOL_IPV6 with IP6T_SO_ORIGINAL_DST.
    """
    local = sockaddr_to_addr(sock.getsockname())
    if local[0].version == 4:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
        port = struct.unpack_from("!H", raw, 2)[0]
        return ipaddress.IPv4Address(raw[4:8]), port
    raw = sock.getsockopt(socket.IPPROTO_IPV6, IP6T_SO_ORIGINAL_DST, 28)
    port = struct.unpack_from("!H", raw, 2)[0]
    return unmap(ipaddress.IPv6Address(raw[8:24])), port


def is_local_address(ip: IPAddress) -> bool:
    """Whether ``ip`` is an address of this host (bind succeeds without IP_TRANSPARENT)."""
    if ip.is_loopback or ip.is_unspecified:
        return True
    with socket.socket(family_of(ip), socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((str(ip), 0))
        except OSError as exc:
            if exc.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True
