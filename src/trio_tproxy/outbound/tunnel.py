"""What the TCP outbounds share once an upstream socket exists: a handshake deadline
and carrying the flow over it."""

from __future__ import annotations

import errno
import socket

from ..relay import relay, send_all
from .base import TcpFlow
from .dial import DialError, close_socket


def handshake_timeout(peer: str, seconds: float) -> DialError:
    return DialError(
        errno.ETIMEDOUT, f"{peer}: no answer within {seconds:g}s (policy.handshake)"
    )


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
    finally:
        close_socket(upstream)
