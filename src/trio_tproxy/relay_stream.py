"""The relay for an upstream that transforms bytes (a cipher, TLS): relay.py's
semantics (timers, half-close, errors, counters) over an :class:`~.upstreams.ByteStream`.

A stream that offers the relay engine a codec (``engine_codec``: shadowsocks) starts
there, its chunks sealed and opened in the engine's pass, and comes back to this
module's two pumps once bulk; any other stream (Trojan's TLS) has the pumps from the
start.
"""

from __future__ import annotations

import socket
from collections.abc import Awaitable, Callable

import trio

from .idle import Activity
from .relay import SPLICE_AFTER, BufferPool, RelayStats, RelayTimeouts, send_all
from .relay_engine import Codec, Handoff, RelayEngine
from .sock import set_reset_on_close
from .upstreams import ByteStream


async def relay_stream(
    client: socket.socket,
    upstream: ByteStream,
    timeouts: RelayTimeouts,
    *,
    chunk: int = 16384,
    stats: RelayStats | None = None,
    pool: BufferPool | None = None,
) -> RelayStats:
    """:func:`relay` for an upstream that transforms bytes (ciphers, TLS): the same
    timers, half-close and error semantics, in userspace. Closes ``upstream`` (with a
    reset when a side broke or the flow was cancelled); the caller closes ``client``.

    The client's bytes are read into ``pool``'s buffers (``policy.buffer_size``), held
    only while a chunk is in flight, so an idle flow holds none; without a pool, into
    one ``chunk``-sized buffer of its own."""
    stats = stats if stats is not None else RelayStats()
    pool = pool if pool is not None else BufferPool(chunk, keep=1)
    finished: set[str] = set()
    broken = True
    activity: Activity | None = None
    handoff: Handoff | None = None
    try:
        opener = getattr(upstream, "engine_codec", None)
        engine = RelayEngine.current(pool.size) if opener is not None else None
        if engine is not None and opener is not None:  # short flows cost less there
            handoff = await _start_in_engine(client, opener, engine, timeouts, stats)
            if handoff is None:  # it ended there
                broken = stats.outcome != "done"
                return stats
            finished.update(name for name, done in (("uplink", handoff.up_done),
                                                    ("downlink", handoff.down_done)) if done)
        async with trio.open_nursery() as nursery:
            scope = nursery.cancel_scope

            def expire() -> None:
                stats.outcome = "idle timeout" if not finished else "half-closed timeout"
                scope.cancel()

            if handoff is None:
                activity = Activity(timeouts.idle, expire)
            else:  # the engine's clock goes on, now cancelling these pumps
                activity = handoff.activity
                activity.on_expire = expire

            def fail(name: str, exc: BaseException) -> None:
                if stats.outcome == "done":
                    reason = exc.strerror if isinstance(exc, OSError) else None
                    stats.outcome = f"{name} error: {reason or exc}"
                set_reset_on_close(client)
                scope.cancel()

            def done(name: str, then: float) -> None:
                finished.add(name)
                if len(finished) < 2:
                    activity.shorten(then)

            async def uplink() -> None:
                try:
                    while True:
                        buf = pool.acquire()
                        try:
                            n = client.recv_into(buf)
                            if n:
                                await upstream.send_all(memoryview(buf)[:n])
                        except BlockingIOError:
                            n = -1
                        finally:
                            pool.release(buf)
                        if n == 0:
                            break
                        if n < 0:
                            await trio.lowlevel.wait_readable(client)
                            continue
                        stats.up += n
                        activity.touch()
                    await upstream.send_eof()
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    fail("uplink", exc)
                    return
                done("uplink", timeouts.downlink_only)

            async def downlink() -> None:
                try:
                    while data := await upstream.receive_some(chunk):
                        await send_all(client, data)
                        stats.down += len(data)
                        activity.touch()
                    client.shutdown(socket.SHUT_WR)
                except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    fail("downlink", exc)
                    return
                done("downlink", timeouts.uplink_only)

            if handoff is None or not handoff.down_done:
                nursery.start_soon(downlink)
            if handoff is None or not handoff.up_done:
                await uplink()  # in this task: two tasks a flow (see relay)
        broken = stats.outcome != "done"
    finally:
        if activity is not None:
            activity.end()
        upstream.close(reset=broken)
    return stats


async def _start_in_engine(
    client: socket.socket,
    opener: Callable[[socket.socket, Callable[[int], None]], Awaitable[Codec]],
    engine: RelayEngine, timeouts: RelayTimeouts, stats: RelayStats,
) -> Handoff | None:  # fmt: skip
    """:func:`relay_stream`'s start in the relay engine, the upstream's framing as a
    codec: None once the flow ended there, else its state when it turned bulk."""
    try:
        codec = await opener(client, stats.add_up)
    except OSError as exc:
        stats.outcome = f"uplink error: {exc.strerror or exc}"
        set_reset_on_close(client)
        return None
    return await engine.carry(
        client, codec.sock, idle=timeouts.idle, uplink_only=timeouts.uplink_only,
        downlink_only=timeouts.downlink_only, stats=stats, splice_after=SPLICE_AFTER,
        codec=codec,
    )  # fmt: skip
