"""Reply sockets: answering a client *from* the remote's address, cached and bounded.

A client's UDP socket may be connected, and a NAT'd game or QUIC stack checks where a
reply comes from: it must come from the address the client sent to, or, for a remote
it never addressed (full cone), from that remote's own address. We send it through a
transparent socket (IP_TRANSPARENT) bound to that address, with the inbound's mark
(v2ray's dokodemo, Xray's FakeUDP). One socket per remote address, shared by every
client and kept in an LRU with the session table's idle timeout: opening and closing
one per packet loses packets and burns CPU (mihomo PR #389), and so does opening one
per client (sing-box#1505 ran out of ports). SO_REUSEADDR + SO_REUSEPORT let the bind
coexist with wildcard sockets that allow it; when a local service owns the port
outright, replies from that address go out as raw packets (``udp/rawsend.py``). A
burst of replies to one client leaves in one GSO send (``udp/gso.py``).

A bound transparent socket also *receives*: with the usual ``socket transparent 1``
fast path in the ruleset, the kernel now delivers later client datagrams for that
remote address to it instead of to the TPROXY listener. So every reply socket has a
reader feeding the same handler as the listener (verified in the netns tests: the
client's second datagram arrives here).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable

import attrs
import trio

from ..addr import Endpoint
from ..addr import show as show_addr
from ..inbound import gso
from ..inbound.sockopt import set_mark, set_transparent
from ..inbound.udp import RCVBUF, DatagramHandler, enable_original_dst, receive_datagrams
from ..inbound.udp import set_buffer as set_socket_buffer
from ..limits import UdpCounters, UdpLimits
from ..outbound.udp_socket import family_of_text
from ..sock import close_socket
from .lru import IdleLru
from .rawsend import RawSender

log = logging.getLogger("trio_tproxy.udp.replies")


@attrs.define(eq=False)
class ReplySocket:
    remote: Endpoint
    sock: socket.socket | None  # None: the address is taken locally, replies go raw
    scope: trio.CancelScope = attrs.field(factory=trio.CancelScope)
    last: float = 0.0
    out: gso.Coalescer | None = None

    def __attrs_post_init__(self) -> None:
        if self.sock is not None:
            self.out = gso.Coalescer(self.sock)


def open_reply_socket(remote: Endpoint, mark: int) -> socket.socket:
    """A transparent UDP socket bound to ``remote`` (raises OSError)."""
    family = family_of_text(remote[0])
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        set_transparent(sock, family)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        set_mark(sock, mark)
        enable_original_dst(sock, family)
        set_socket_buffer(sock, socket.SO_RCVBUF, RCVBUF)
        sock.bind(remote)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class ReplySockets:
    def __init__(
        self,
        *,
        mark: int,
        buffer: bytearray,
        limits: Callable[[], UdpLimits],
        counters: UdpCounters,
        on_client_datagram: DatagramHandler,
        nursery: trio.Nursery,
    ) -> None:
        self.mark = mark
        self._buffer = buffer
        self._limits = limits
        self._counters = counters
        self._on_client_datagram = on_client_datagram
        self._nursery = nursery
        self._table: IdleLru[Endpoint, ReplySocket] = IdleLru()
        self._raw = RawSender(mark)

    def __len__(self) -> int:
        return len(self._table)

    def send(self, remote: Endpoint, client: Endpoint, payload: memoryview) -> str | None:
        """Send ``payload`` to ``client`` from ``remote``; None, or why it was dropped."""
        now = trio.current_time()
        entry = self._table.get(remote)
        if entry is None:
            entry = self._open(remote)
            self._make_room()
            self._table.add(remote, entry, now)
        else:
            self._table.touch(remote, entry, now)
        if entry.out is None:
            self._counters.reply_raw += 1
            return self._raw.send(remote, client, payload)
        return entry.out.send(payload, client)

    def _open(self, remote: Endpoint) -> ReplySocket:
        try:
            sock = open_reply_socket(remote, self.mark)
        except OSError as exc:
            why = "in use by a local service" if exc.errno == errno.EADDRINUSE else exc.strerror
            log.info("cannot bind a reply socket to %s (%s): replies from it go out as raw "
                     "packets", show_addr(remote), why)  # fmt: skip
            return ReplySocket(remote, None)
        self._counters.reply_sockets += 1
        entry = ReplySocket(remote, sock)
        self._nursery.start_soon(self._read, entry)
        return entry

    async def _read(self, entry: ReplySocket) -> None:
        assert entry.sock is not None
        with entry.scope:
            await receive_datagrams(entry.sock, self._buffer, self._on_client_datagram)

    def _make_room(self) -> None:
        limit = self._limits().max_reply_sockets
        while len(self._table) >= limit:
            oldest = self._table.pop_oldest()
            if oldest is None:
                break
            self._counters.reply_evicted += 1
            _close(oldest[1])

    def expire(self, now: float, idle: float) -> None:
        for _, entry in self._table.pop_idle(now, idle):
            _close(entry)

    def next_expiry(self, idle: float) -> float | None:
        return self._table.next_expiry(idle)

    def close(self) -> None:
        while (oldest := self._table.pop_oldest()) is not None:
            _close(oldest[1])
        self._raw.close()


def _close(entry: ReplySocket) -> None:
    entry.scope.cancel()
    if entry.sock is not None:
        close_socket(entry.sock)
