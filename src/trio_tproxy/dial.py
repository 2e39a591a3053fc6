"""Opening upstream TCP connections: marked, non-blocking, bounded by the handshake timeout.

:func:`open_tcp` dials one address. :func:`open_tcp_happy` races several with Happy
Eyeballs (RFC 8305), for outbounds that resolve a name. :func:`recv_message` reads a
proxy's handshake replies and is where their failures become :class:`DialError`.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import socket
from collections.abc import Callable, Sequence
from typing import TypeVar

import trio

from .addr import IPAddress, SockAddr, unmap
from .addr import show as show_addr
from .inbound.sockopt import set_mark
from .resolver import Resolver
from .sock import addr_to_sockaddr, close_socket, family_of

T = TypeVar("T")

# RFC 8305 §5 "Connection Attempt Delay": 250 ms is the recommended default.
HAPPY_EYEBALLS_DELAY = 0.25
# Handshake replies are a few hundred bytes at most; one read normally holds them.
HANDSHAKE_RECV = 4096


class DialError(OSError):
    """An upstream connection could not be opened; ``str()`` is a complete log message."""

    def __str__(self) -> str:
        # OSError would prefix "[Errno N] ": the message already says what happened.
        return self.strerror if isinstance(self.strerror, str) else super().__str__()


async def open_tcp(addr: SockAddr, *, mark: int, timeout: float) -> socket.socket:  # noqa: ASYNC109
    """Connect to ``addr`` with SO_MARK set before the SYN leaves (so it skips diversion)."""
    family = family_of(addr[0])
    # SOCK_NONBLOCK: non-blocking from birth, without a second syscall
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        set_mark(sock, mark)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = sock.connect_ex(addr_to_sockaddr(addr, family))
        if err == errno.EINPROGRESS:
            with trio.move_on_after(timeout) as scope:
                await trio.lowlevel.wait_writable(sock)
            if scope.cancelled_caught:
                raise DialError(errno.ETIMEDOUT, f"connect to {show_addr(addr)} timed out")
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise DialError(err, f"connect to {show_addr(addr)} failed: {os.strerror(err)}")
    except BaseException:
        close_socket(sock)
        raise
    return sock


def interleave_families(ips: Sequence[IPAddress]) -> list[IPAddress]:
    """RFC 8305 §4: IPv6 first, then alternate families (duplicates dropped)."""
    v6 = [ip for ip in ips if ip.version == 6]
    v4 = [ip for ip in ips if ip.version == 4]
    order: dict[IPAddress, None] = {}
    for pair in itertools.zip_longest(v6, v4):
        for ip in pair:
            if ip is not None:
                order[ip] = None
    return list(order)


async def open_tcp_happy(
    ips: Sequence[IPAddress],
    port: int,
    *,
    mark: int,
    timeout: float,  # noqa: ASYNC109 (a plain float: it also bounds each attempt)
    delay: float = HAPPY_EYEBALLS_DELAY,
) -> socket.socket:
    """Happy Eyeballs (RFC 8305): start with IPv6, start the next address ``delay``
    later or as soon as the previous attempt failed; the first connection wins and
    every other attempt is cancelled (its socket closed)."""
    order = interleave_families(ips)
    if not order:
        raise DialError(errno.EADDRNOTAVAIL, "no address to connect to")
    if len(order) == 1:
        return await open_tcp((order[0], port), mark=mark, timeout=timeout)
    deadline = trio.current_time() + timeout
    winner: list[socket.socket] = []
    errors: list[str] = []
    last_errno = errno.ETIMEDOUT

    async def attempt(ip: IPAddress, failed: trio.Event) -> None:
        nonlocal last_errno
        try:
            sock = await open_tcp(
                (ip, port), mark=mark, timeout=max(0.0, deadline - trio.current_time())
            )
        except OSError as exc:  # DialError, or socket() itself (no IPv6 here, no CAP)
            errors.append(
                str(exc) if isinstance(exc, DialError) else f"{show_addr((ip, port))}: {exc}"
            )
            last_errno = exc.errno or last_errno
            failed.set()
            return
        if winner:  # lost a photo finish: no checkpoint since open_tcp returned
            close_socket(sock)
            return
        winner.append(sock)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        for ip in order:
            failed = trio.Event()
            nursery.start_soon(attempt, ip, failed)
            with trio.move_on_after(delay):
                await failed.wait()
    if winner:
        return winner[0]
    raise DialError(last_errno, "; ".join(errors))


def ip_literal(host: str) -> IPAddress | None:
    try:
        return unmap(ipaddress.ip_address(host))
    except ValueError:
        return None


async def open_tcp_host(
    host: str | IPAddress,
    port: int,
    *,
    resolver: Resolver,
    mark: int,
    timeout: float,  # noqa: ASYNC109
) -> socket.socket:
    """Connect to ``host``: an IP, or a name looked up through ``resolver``.

    Callers that dial the same host per flow pass it through :func:`ip_literal` once.
    """
    ip = ip_literal(host) if isinstance(host, str) else host
    if ip is not None:
        return await open_tcp((ip, port), mark=mark, timeout=timeout)
    assert isinstance(host, str)
    ips = await resolver.resolve(host)
    if not ips:
        raise DialError(errno.EHOSTUNREACH, f"cannot resolve {host!r}")
    return await open_tcp_happy(ips, port, mark=mark, timeout=timeout)


async def recv_message(
    sock: socket.socket,
    parse: Callable[[bytes], tuple[T, int] | None],
    *,
    peer: str,
    buffered: bytes = b"",
) -> tuple[T, bytes]:
    """Read until ``parse`` yields a message; return it and the bytes received after it.

    ``parse`` follows the h11 reader contract (None = need more, ValueError = garbage);
    every failure leaves here as a DialError whose message starts with ``peer``.
    """
    buf = buffered
    while True:
        try:
            result = parse(buf) if buf else None
        except ValueError as exc:
            raise DialError(errno.EPROTO, f"{peer}: bad reply: {exc}") from exc
        if result is not None:
            message, used = result
            return message, buf[used:]
        # Wait first: the reply is at least a round trip away, so an immediate recv
        # would only fail with EAGAIN (a syscall and an exception per handshake step).
        await trio.lowlevel.wait_readable(sock)
        try:
            chunk = sock.recv(HANDSHAKE_RECV)
        except BlockingIOError:
            continue
        except OSError as exc:
            raise DialError(exc.errno or errno.EIO, f"{peer}: {exc.strerror or exc}") from exc
        if not chunk:
            raise DialError(errno.ECONNRESET, f"{peer}: closed the connection during the handshake")
        buf += chunk
