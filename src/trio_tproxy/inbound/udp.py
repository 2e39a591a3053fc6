"""The UDP side of the ``tproxy`` inbound: a transparent, dual-stack datagram listener.

TPROXY hands us datagrams addressed to any IP. Unlike a TCP connection, a datagram has
no accepted socket whose local address tells the original destination; the kernel adds
it to each datagram as a control message when IP_RECVORIGDSTADDR (and, for the IPv6
flows of a dual-stack socket, IPV6_RECVORIGDSTADDR) is on (kernel
Documentation/networking/tproxy.rst; v2ray reads the same cmsgs in udp/hub_linux.go).
This is why REDIRECT cannot carry UDP: NAT rewrites the destination and nothing
recovers it.

:func:`receive_datagrams` serves the listener and the reply sockets alike
(``udp/replies.py``): once a transparent socket is bound to a remote address, a
ruleset's ``socket transparent 1`` fast path delivers later client datagrams for that
address to it rather than to the listener, with the same control message.

Addresses on the hot path are ``Endpoint`` tuples, ``(text, port)``, exactly what
``sendto`` takes and ``recvfrom`` gives: IPv4 as dotted text (never ``::ffff:``-mapped),
so a client seen on the dual-stack listener and on an IPv4 reply socket has one key.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

from ..addr import Endpoint
from ..config import Inbound
from ..sock import EMPTY, FULL, RECV_BATCH, Batch, receive_batches
from . import gso
from .listen import open_inbound_socket
from .sockopt import (
    IP_RECVORIGDSTADDR,
    IPV6_RECVORIGDSTADDR,
    set_transparent,
)

log = logging.getLogger("trio_tproxy.inbound.udp")

# payload (valid until the handler returns), client source, original destination
# (None if the kernel gave none), truncated (the datagram was larger than the buffer)
DatagramHandler = Callable[[memoryview, Endpoint, Endpoint | None, bool], None]

# The largest UDP payload is 65527 bytes (IPv6; IPv4: 65507), so nothing but an IPv6
# jumbogram is truncated by a buffer of this size; truncation is still checked.
DATAGRAM_BUFFER = 65536
# struct sockaddr_in6 (28 bytes) in one cmsg, with room to spare (v2ray uses 256).
ANCILLARY_SIZE = socket.CMSG_SPACE(28) * 2
# Receive buffer of every socket that carries datagrams (listener, reply, upstream):
# room for bursts while the one Python thread is busy elsewhere or starved of CPU. At
# 200 Mbit/s of 1.4 kB datagrams (~2.3 kB of kernel memory each) 8 MiB is ~200 ms. A
# limit, not an allocation (net.ipv4.udp_mem caps the total); SO_RCVBUFFORCE (we have
# CAP_NET_ADMIN) goes past net.core.rmem_max.
RCVBUF = 8 << 20
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
IP_ORIGDSTADDR = IP_RECVORIGDSTADDR  # the cmsg type has the option's number
# A plain int: socket.MSG_TRUNC is an IntFlag, and `int & IntFlag` goes through the
# enum machinery, a measurable share of the per-datagram cost.
MSG_TRUNC = int(socket.MSG_TRUNC)
IPV6_ORIGDSTADDR = IPV6_RECVORIGDSTADDR
_MEMO_SIZE = 4096  # parsed addresses remembered per socket


def endpoint_of(sockaddr: tuple[object, ...]) -> Endpoint:
    """``recvfrom``'s address as an Endpoint: ``::ffff:a.b.c.d`` becomes ``a.b.c.d``."""
    host = str(sockaddr[0])
    if host.startswith("::ffff:") and host.count(":") == 3 and "." in host:
        host = host[7:]
    port = sockaddr[1]
    assert isinstance(port, int)
    return host, port


def parse_original_dst(ancdata: list[tuple[int, int, bytes]]) -> Endpoint | None:
    """The IP_ORIGDSTADDR / IPV6_ORIGDSTADDR control message as an Endpoint.

    The payload is a ``struct sockaddr_in`` (port at 2, address at 4) or
    ``sockaddr_in6`` (port at 2, address at 8); anything shorter is ignored.
    """
    for level, kind, data in ancdata:
        if level == socket.SOL_IP and kind == IP_ORIGDSTADDR and len(data) >= 8:
            return socket.inet_ntop(socket.AF_INET, data[4:8]), int.from_bytes(data[2:4], "big")
        if level == socket.IPPROTO_IPV6 and kind == IPV6_ORIGDSTADDR and len(data) >= 24:
            host = socket.inet_ntop(socket.AF_INET6, data[8:24])
            return endpoint_of((host, int.from_bytes(data[2:4], "big")))
    return None


def set_buffer(sock: socket.socket, option: int, size: int) -> None:
    """SO_RCVBUF/SO_SNDBUF raised to ``size``, past the sysctl cap when we may."""
    forced = SO_RCVBUFFORCE if option == socket.SO_RCVBUF else SO_SNDBUFFORCE
    try:
        sock.setsockopt(socket.SOL_SOCKET, forced, size)
    except OSError:
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, size)
        except OSError as exc:  # a smaller buffer only means earlier drops under bursts
            log.debug("cannot set socket buffer to %d: %s", size, exc)


def enable_original_dst(sock: socket.socket, family: int) -> None:
    """Ask for the original destination of every datagram (cmsgs, see the module doc)."""
    sock.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)


def open_udp_listener(inbound: Inbound, *, reuseport: bool = False) -> socket.socket:
    """Create and bind the transparent UDP socket; failures become one SocketSetupError."""

    def prepare(sock: socket.socket, family: int) -> None:
        set_transparent(sock, family)
        enable_original_dst(sock, family)
        set_buffer(sock, socket.SO_RCVBUF, RCVBUF)

    return open_inbound_socket(inbound, socket.SOCK_DGRAM, prepare, reuseport=reuseport)


async def receive_datagrams(
    sock: socket.socket, buffer: bytearray, handler: DatagramHandler
) -> None:
    """Hand every datagram to ``handler`` until the socket is closed (then return).

    ``buffer`` may be shared by every receiving task: the handler runs synchronously
    and must copy what it keeps, so no other task can overwrite it in between. Each
    batch is a GSO batch (inbound/gso.py): what the handlers send is coalesced while it
    runs and leaves when it ends.
    """

    def on_error(exc: OSError) -> None:
        log.warning("receive error on %s: %s", _name(sock), exc.strerror or exc)

    await receive_batches(sock, _BatchReader(sock, buffer, handler).read_batch, on_error)


class _BatchReader:
    def __init__(self, sock: socket.socket, buffer: bytearray, handler: DatagramHandler):
        self.sock = sock
        self.buffers = [buffer]
        self.view = memoryview(buffer)
        self.handler = handler
        # Most datagrams come from a few clients to a few remotes: parsed addresses are
        # memoised (by the raw cmsg and sockaddr), two dict lookups instead of two
        # parses per datagram.
        self.destinations: dict[tuple[int, int, bytes], Endpoint | None] = {}
        self.sources: dict[tuple[object, ...], Endpoint] = {}

    def read_batch(self) -> Batch | OSError:
        """Read and handle up to RECV_BATCH datagrams, as one GSO batch."""
        gso.open_batch()
        try:
            return self._read()
        finally:
            gso.close_batch()

    def _read(self) -> Batch | OSError:
        sock, buffers, view, handler = self.sock, self.buffers, self.view, self.handler
        destinations, sources = self.destinations, self.sources
        for _ in range(RECV_BATCH):
            try:
                size, ancdata, flags, sockaddr = sock.recvmsg_into(buffers, ANCILLARY_SIZE)
            except BlockingIOError:
                return EMPTY
            except OSError as exc:
                return exc
            if len(ancdata) == 1:
                cmsg = ancdata[0]
                dst = destinations.get(cmsg)
                if dst is None:
                    dst = parse_original_dst(ancdata)
                    if len(destinations) >= _MEMO_SIZE:
                        destinations.clear()
                    destinations[cmsg] = dst
            else:
                dst = parse_original_dst(ancdata)
            src = sources.get(sockaddr)
            if src is None:
                src = endpoint_of(sockaddr)
                if len(sources) >= _MEMO_SIZE:
                    sources.clear()
                sources[sockaddr] = src
            handler(view[:size], src, dst, flags & MSG_TRUNC != 0)
        return FULL


def _name(sock: socket.socket) -> str:
    try:
        return str(sock.getsockname()[:2])
    except OSError:
        return "a closed socket"
