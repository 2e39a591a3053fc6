"""What the proxy outbounds share: dialling the proxy and negotiating within one
handshake deadline, and handing the resulting socket to the session."""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ..addr import IPAddress
from ..dial import DialError, open_tcp_host
from ..relay import send_all
from ..resolver import Resolver
from ..sock import close_socket
from .base import SocketUpstream

T = TypeVar("T")


def handshake_timeout(peer: str, seconds: float) -> DialError:
    return DialError(errno.ETIMEDOUT, f"{peer}: no answer within {seconds:g}s (policy.handshake)")


async def open_negotiated(
    peer: str,
    proxy: tuple[str | IPAddress, int],
    negotiate: Callable[[socket.socket], Awaitable[T]],
    *,
    mark: int,
    resolver: Resolver,
    timeout: float,  # noqa: ASYNC109
) -> tuple[socket.socket, T]:
    """Connect to ``proxy`` and run ``negotiate`` on the socket, all within ``timeout``;
    any failure closes the socket and names ``peer`` in its DialError."""
    sock: socket.socket | None = None
    with trio.move_on_after(timeout) as scope:
        try:
            sock = await open_tcp_host(*proxy, resolver=resolver, mark=mark, timeout=timeout)
        except DialError as exc:
            raise DialError(exc.errno, f"{peer}: {exc}") from exc
        try:
            result = await negotiate(sock)
        except BaseException:
            close_socket(sock)
            raise
    if scope.cancelled_caught:
        if sock is not None:
            close_socket(sock)
        raise handshake_timeout(peer, timeout)
    assert sock is not None
    return sock, result


async def socket_upstream(
    sock: socket.socket, initial: bytes, *, chain: tuple[str, ...], early: bytes = b""
) -> SocketUpstream:
    """``sock`` as the flow's upstream, once ``initial`` (the client's sniffed bytes)
    went out first; closes ``sock`` if that fails."""
    if initial:
        try:
            await send_all(sock, initial)
        except OSError as exc:
            close_socket(sock)
            raise DialError(
                exc.errno or errno.EIO, f"sending the first bytes failed: {exc}"
            ) from exc
    return SocketUpstream(sock, early=early, chain=chain)
