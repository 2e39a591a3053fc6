"""The TCP relay: two pumps, half-close, v2ray's activity timer, byte counters.

Sockets here are plain non-blocking stdlib sockets driven with
``trio.lowlevel.wait_readable/wait_writable``: each chunk costs one recv, one send and
one scheduler checkpoint, about half of what ``trio.SocketStream`` spends. Buffers come
from a pool and are only held while a chunk is in flight, so idle flows (most of them,
on a home gateway) cost no buffer memory.

Timer semantics follow v2ray (reference section 1, "Timeouts / policy"): inactivity in
both directions for ``idle`` ends the flow; once the client has finished sending (EOF)
the remaining direction must show activity every ``downlink_only``; once the server has
finished, every ``uplink_only``. A half-close is passed on: EOF from one side becomes
``shutdown(SHUT_WR)`` towards the other, and the other direction keeps flowing.

Socket-to-socket flows start in the relay engine (relay_engine.py): one epoll set per
process moves every flow's small chunks without waking the flows' tasks; a direction
that turns bulk hands the flow back here, to the pumps, which splice it. The pumps
below carry a flow from its start when the engine is off or a custom copier is given.
An upstream that transforms bytes (a cipher, TLS) is relay_stream.py's.

The seam for the zero-copy path is :data:`Copier`: a function that moves one direction
until EOF. ``copy_adaptive`` (the default) starts in userspace and moves a direction
that has carried ``SPLICE_AFTER`` bytes to splice(2) (splice.py), without touching the
timer, half-close or accounting logic; ``copy_userspace`` is the portable one. (The
engine hands a flow over only once its receives are large too: see there.)
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Awaitable, Callable

import attrs
import trio

from .idle import Activity
from .relay_engine import Handoff, RelayEngine
from .sock import set_reset_on_close
from .splice import PipePool, SpliceUnsupported, splice_until_eof

# A direction switches to splice(2) once it has carried this much: short exchanges
# (most flows) never pay for a pipe; bulk transfers get zero-copy within a few chunks.
SPLICE_AFTER = 256 * 1024
# Free receive buffers a pool keeps for reuse. A buffer is out only while its chunk
# waits for the other side to take it, so a burst of many blocked sends leaves as many
# free buffers behind, kept for the life of the process (and of each worker): 16 x the
# default 64 KiB is 1 MiB; 64 kept up to 4 MiB. Past the cap a chunk allocates afresh:
# ~1 us for 64 KiB, ~10 us when the heap must grow (page faults), measured; that is
# paid only while more than 16 sends are blocked at once.
KEEP_BUFFERS = 16


class BufferPool:
    """Reusable receive buffers (at most ``keep`` idle ones retained), and the splice
    pipes that replace them for bulk transfers (``pipes=None``: userspace only)."""

    def __init__(self, size: int, keep: int = KEEP_BUFFERS, pipes: PipePool | None = None) -> None:
        self.size = size
        self.keep = keep
        self.pipes = pipes
        self._free: list[bytearray] = []

    def acquire(self) -> bytearray:
        return self._free.pop() if self._free else bytearray(self.size)

    def release(self, buf: bytearray) -> None:
        if len(self._free) < self.keep:
            self._free.append(buf)


@attrs.frozen
class RelayTimeouts:
    idle: float = 300.0
    uplink_only: float = 1.0
    downlink_only: float = 1.0


@attrs.define
class RelayStats:
    up: int = 0  # client -> server bytes
    down: int = 0  # server -> client bytes
    outcome: str = "done"  # done | idle timeout | <side> error: <reason> | cancelled

    def add_up(self, n: int) -> None:
        self.up += n

    def add_down(self, n: int) -> None:
        self.down += n


Copier = Callable[[socket.socket, socket.socket, BufferPool, Activity, Callable[[int], None]],
                  Awaitable[object]]  # fmt: skip


async def send_all(sock: socket.socket, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]


async def copy_adaptive(
    src: socket.socket,
    dst: socket.socket,
    pool: BufferPool,
    activity: Activity,
    count: Callable[[int], None],
    *,
    moved: int = 0,
) -> None:
    """Userspace copying first; splice(2) once the direction proved to be bulk
    (``moved``: bytes it carried before, in the relay engine)."""
    if moved < SPLICE_AFTER:
        moved += await copy_userspace(src, dst, pool, activity, count,
                                      limit=SPLICE_AFTER - moved)  # fmt: skip
    if moved < SPLICE_AFTER:
        return  # EOF came first
    pipe = pool.pipes.acquire() if pool.pipes is not None else None
    if pipe is not None and pool.pipes is not None:

        def on_chunk(n: int) -> None:
            count(n)
            activity.touch()

        with contextlib.suppress(SpliceUnsupported):
            await splice_until_eof(src, dst, pool.pipes, pipe, on_chunk)
            return
    await copy_userspace(src, dst, pool, activity, count)


async def copy_userspace(
    src: socket.socket,
    dst: socket.socket,
    pool: BufferPool,
    activity: Activity,
    count: Callable[[int], None],
    *,
    limit: int | None = None,
) -> int:
    """Move bytes from ``src`` to ``dst`` until EOF (or ``limit`` bytes, then return
    how many moved, at least ``limit``); OSError means a side broke."""
    moved = 0
    while limit is None or moved < limit:
        buf = pool.acquire()
        try:
            try:
                n = src.recv_into(buf)
            except BlockingIOError:
                n = -1
            if n > 0:
                await send_all(dst, memoryview(buf)[:n])
        finally:
            pool.release(buf)
        if n == 0:
            return moved
        if n < 0:
            await trio.lowlevel.wait_readable(src)
            continue
        moved += n
        count(n)
        activity.touch()
        # fairness: a fast flow must not starve the rest. Not a wait for readability
        # even after a short read: under request/response load the next chunk is
        # often there by the time this task runs again, and a wait costs an epoll_ctl
        # and a wake-up per chunk (-9 % keep-alive requests/s in bench_gateway, 6
        # alternating rounds, fresh labs; connections/s unchanged).
        await trio.lowlevel.checkpoint()
    return moved


async def relay(
    client: socket.socket,
    upstream: socket.socket,
    timeouts: RelayTimeouts,
    pool: BufferPool,
    *,
    copier: Copier = copy_adaptive,
    stats: RelayStats | None = None,
) -> RelayStats:
    """Relay both directions until both ended, the timer fired, or a side broke.

    Never raises for network errors: they end up in ``stats.outcome``, and both sockets
    are set to reset on close so each peer learns promptly that the flow failed.
    The caller owns (and closes) both sockets.
    """
    stats = stats if stats is not None else RelayStats()
    handoff: Handoff | None = None
    engine = RelayEngine.current(pool.size) if copier is copy_adaptive else None
    if engine is not None:  # small chunks from one epoll set (relay_engine.py)
        splice = SPLICE_AFTER if pool.pipes is not None and pool.pipes.supported else None
        handoff = await engine.carry(
            client, upstream, idle=timeouts.idle, uplink_only=timeouts.uplink_only,
            downlink_only=timeouts.downlink_only, stats=stats, splice_after=splice,
        )  # fmt: skip
        if handoff is None:
            return stats
    # The uplink pump runs in this task, the downlink in a child: two tasks a flow, and
    # the idle clock (idle.py) watches without a third. After the engine, only the
    # directions still open (a bulk one goes to splice at once).
    flow: _Relay | None = None
    try:
        async with trio.open_nursery() as nursery:
            flow = _Relay(client, upstream, pool=pool, copier=copier, stats=stats,
                          scope=nursery.cancel_scope, idle=timeouts.idle,
                          handoff=handoff)  # fmt: skip
            if handoff is None or not handoff.down_done:
                nursery.start_soon(flow.pump, "downlink", upstream, client, timeouts.uplink_only,
                                   handoff.down_moved if handoff else 0)  # fmt: skip
            if handoff is None or not handoff.up_done:
                await flow.pump("uplink", client, upstream, timeouts.downlink_only,
                                handoff.up_moved if handoff else 0)  # fmt: skip
    finally:
        if flow is not None:
            flow.activity.end()
    return stats


class _Relay:
    """What both pumps of one :func:`relay` share (one object: an idle flow is small)."""

    __slots__ = ("activity", "client", "copier", "finished", "pool", "scope", "stats",
                 "upstream")  # fmt: skip

    def __init__(self, client: socket.socket, upstream: socket.socket, *, pool: BufferPool,
                 copier: Copier, stats: RelayStats, scope: trio.CancelScope,
                 idle: float, handoff: Handoff | None = None) -> None:  # fmt: skip
        self.client, self.upstream, self.pool, self.copier = client, upstream, pool, copier
        self.stats, self.scope = stats, scope
        if handoff is None:
            self.finished = 0  # directions that reached EOF
            self.activity = Activity(idle, self.expire)
        else:  # the engine's clock goes on, now cancelling this relay
            self.finished = handoff.finished
            self.activity = handoff.activity
            self.activity.on_expire = self.expire

    def expire(self) -> None:
        self.stats.outcome = "idle timeout" if not self.finished else "half-closed timeout"
        self.scope.cancel()

    async def pump(self, name: str, src: socket.socket, dst: socket.socket, then: float,
                   moved: int = 0) -> None:  # fmt: skip
        """One direction: copy until EOF, pass the half-close on (``moved``: what it
        carried in the relay engine before)."""
        stats = self.stats
        try:
            if src is self.upstream and not moved:
                # just connected: its first bytes are a round trip away at least, so a
                # read now would only fail with EAGAIN (and it is readable at once if not)
                await trio.lowlevel.wait_readable(src)
            count = stats.add_up if src is self.client else stats.add_down
            if moved:
                await copy_adaptive(src, dst, self.pool, self.activity, count, moved=moved)
            else:
                await self.copier(src, dst, self.pool, self.activity, count)
            dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if stats.outcome == "done":
                stats.outcome = f"{name} error: {exc.strerror or exc}"
            set_reset_on_close(self.client)
            set_reset_on_close(self.upstream)
            self.scope.cancel()
            return
        self.finished += 1
        if self.finished < 2:
            self.activity.shorten(then)
