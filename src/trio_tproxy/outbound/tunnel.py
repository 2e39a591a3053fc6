"""What the proxy outbounds share: dialling the proxy and negotiating within one
handshake deadline, and carrying the flow over the resulting socket."""

from __future__ import annotations

import errno
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

from ..inbound.sockopt import IPAddress, set_reset_on_close
from ..relay import relay, send_all
from ..resolver import Resolver
from .base import TcpFlow
from .dial import DialError, close_socket, open_tcp_host

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


async def carry(flow: TcpFlow, upstream: socket.socket, early: bytes = b"") -> None:
    """Relay ``flow`` over ``upstream`` until it ends, then close ``upstream``.

    ``early`` is what the upstream sent right behind its handshake reply (a
    server-first protocol's banner, say): it goes to the client first. The client's
    sniffed ``prefix`` goes upstream before anything else, so no byte is lost or
    reordered either way.
    """
    try:
        if early:
            await send_all(flow.client, early)
            flow.stats.down += len(early)
        if flow.prefix:
            await send_all(upstream, flow.prefix)
            flow.stats.up += len(flow.prefix)
        await relay(flow.client, upstream, flow.ctx.timeouts, flow.ctx.pool, stats=flow.stats)
    except BaseException:  # cancelled (drain deadline): reset, never a clean FIN
        set_reset_on_close(upstream)
        raise
    finally:
        close_socket(upstream)
