"""Socket helpers every I/O part shares: a leaf beside :mod:`.addr`, which it alone uses.

Includes the one batched-receive loop (:func:`receive_batches`) that every datagram
socket we read is served by: the transparent listener and reply sockets, the upstream
sockets of direct and socks, and the ``dns.listen`` listener.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import ipaddress
import socket
import struct
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Final

import trio

from .addr import IPAddress, SockAddr, unmap


@functools.lru_cache(maxsize=4096)
def _parse_ip(host: str) -> IPAddress:
    # Parsing "::ffff:a.b.c.d" costs more than a short flow's cipher setup; the same
    # clients and servers come back all the time (addresses are immutable: shareable).
    return unmap(ipaddress.ip_address(host.split("%", 1)[0]))  # drop an IPv6 scope id


def sockaddr_to_addr(sockaddr: tuple[object, ...]) -> SockAddr:
    port = sockaddr[1]
    assert isinstance(port, int)
    return _parse_ip(str(sockaddr[0])), port


def addr_to_sockaddr(addr: SockAddr, family: int) -> tuple[str, int]:
    ip, port = addr
    if family == socket.AF_INET6 and isinstance(ip, IPv4Address):
        return f"::ffff:{ip}", port
    return str(ip), port


def family_of(ip: IPAddress) -> int:
    return socket.AF_INET6 if ip.version == 6 else socket.AF_INET


# A bulk receiver that cannot splice (a cipher's socket) wakes once this much is in...
BULK_LOWAT: Final = 65536
# ... or after this long with what is there (so a flow's tail is not held back more).
BULK_LINGER: Final = 0.001
BULK_AFTER: Final = 256 * 1024  # bytes received (since a pause) before that starts


class BulkReceive:
    """Fewer wake-ups for a receiver of bulk data: with SO_RCVLOWAT the kernel wakes it
    once :data:`BULK_LOWAT` bytes are in, not at every segment the sender writes, and
    a wait lasts at most :data:`BULK_LINGER`, after which what is there is read
    anyway. A wait that had to linger and then finds under half a mark means the
    sender paused or slowed: the socket wakes at every byte again (so an exchange that
    follows a bulk one is held back once, by at most the linger), until
    :data:`BULK_AFTER` more bytes came.

    A shadowsocks download through ss-server costs the gateway half the CPU per Gbit
    with it (bench_encrypted): the server writes a cipher chunk at a time.

    The mark is only set while the receive buffer holds four times it, so the kernel
    never has to grow the buffer for it (which would clamp the TCP window to it)."""

    __slots__ = ("_lingered", "_on", "_since", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._on = False
        self._lingered = False
        self._since = 0  # bytes received while the mark is off

    async def wait(self) -> None:
        """Until the socket is readable (or the linger passed)."""
        if not self._on:
            await trio.lowlevel.wait_readable(self._sock)
            return
        with trio.move_on_after(BULK_LINGER) as scope:
            await trio.lowlevel.wait_readable(self._sock)
        self._lingered = scope.cancelled_caught

    def received(self, n: int) -> None:
        """After each receive: ``n`` bytes came (0: none were there)."""
        if self._on:
            # a wait that had to linger and found under half a mark: the sender paused
            # or slowed to a trickle, where waiting gains nothing and delays each piece
            if self._lingered and n < BULK_LOWAT // 2 and self._set(1):
                self._on = False  # (_since is 0: it counts only while the mark is off)
        else:
            self._since += n
            if self._since >= BULK_AFTER:
                self._since = 0
                self._on = self._set(BULK_LOWAT)
        self._lingered = False

    def _set(self, lowat: int) -> bool:
        try:
            if lowat > 1 and self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < 4 * lowat:
                return False
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, lowat)
        except OSError:
            return False
        return True


def close_socket(sock: socket.socket) -> None:
    """Close a socket that trio may be waiting on (wakes any waiter with an error);
    outside trio (the supervisor of worker processes) nothing can be waiting."""
    if sock.fileno() >= 0:
        with contextlib.suppress(RuntimeError):
            trio.lowlevel.notify_closing(sock)
        sock.close()


def close_unwatched(sock: socket.socket) -> None:
    """Close a socket no task waits on any more (every task of its flow has ended):
    the kernel takes it out of trio's epoll set itself. trio's notify_closing, for a
    socket someone may still wait on, costs an epoll_ctl per socket, and a failing one
    (a Python exception) for a socket trio never waited on: ~7 % of the CPU of a
    shadowsocks connection in bench_encrypted's profile."""
    sock.close()


def set_reset_on_close(sock: socket.socket) -> None:
    """SO_LINGER {on, 0}: close() sends RST instead of FIN (a prompt, honest failure)."""
    # the socket may already be dead; close() will do what it can
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


# Datagrams read per wake-up before yielding to other tasks: enough to amortise the
# scheduler round trip, few enough that one busy socket cannot starve the others.
RECV_BATCH: Final = 64
ERROR_PAUSE: Final = 0.01  # after an unexpected receive error: never spin on a broken socket


class Batch(enum.Enum):
    """How a batch of non-blocking reads ended (else: the OSError a read raised)."""

    FULL = "full"  # RECV_BATCH datagrams read; more may be waiting
    EMPTY = "empty"  # the socket is drained (a read raised BlockingIOError)


FULL: Final = Batch.FULL
EMPTY: Final = Batch.EMPTY


async def receive_batches(
    sock: socket.socket,
    read_batch: Callable[[], Batch | OSError],
    on_error: Callable[[OSError], None] | None = None,
) -> None:
    """Call ``read_batch`` again and again until ``sock`` is closed, then return.

    ``read_batch`` reads and handles at most :data:`RECV_BATCH` datagrams without an
    await (``for _ in range(RECV_BATCH)`` around the socket's non-blocking receive),
    returning :data:`FULL`, :data:`EMPTY` on BlockingIOError, or any other OSError it
    caught. After FULL the other tasks run first; after EMPTY we wait until the socket
    is readable; an error on a closed socket ends the loop, any other goes to
    ``on_error`` and is followed by :data:`ERROR_PAUSE`.
    """
    while True:
        outcome = read_batch()
        if outcome is FULL:
            await trio.lowlevel.checkpoint()
            continue
        if outcome is not EMPTY:
            if sock.fileno() < 0:
                return
            if on_error is not None:
                on_error(outcome)
            await trio.sleep(ERROR_PAUSE)
            continue
        try:
            await trio.lowlevel.wait_readable(sock)
        except (trio.ClosedResourceError, OSError):
            return
