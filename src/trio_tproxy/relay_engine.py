"""The relay engine: every socket-to-socket flow's chunks moved from one epoll set.

Per chunk, a relay pump (relay.py) costs a wake-up of its task by trio's scheduler and
an ``epoll_ctl`` to wait again (trio waits one-shot): about twice the recv and send it
exists for. Here one system task per trio run waits on a level-triggered epoll set
that holds both sockets of every flow, and when it wakes it moves a chunk for every
ready socket in one pass: recv into the engine's buffer, send it on, and only what the
other side did not take is copied aside (and the source is not read again until it is
gone). A flow's own task just waits for the flow to end.

The semantics are the pumps' (relay.py): a half-close is passed on, v2ray's activity
timer with ``uplink_only``/``downlink_only`` after one side finished, byte counters,
the outcome strings ("uplink error: ...", "idle timeout", ...), both sockets reset when
a side broke, cancellation (the API, the drain) ends the flow at once. A direction that
has carried ``splice_after`` bytes in receives of :data:`BULK_MEAN` on average is bulk:
once nothing is held aside, the flow goes back to its task (:class:`Handoff`), whose
pumps move bulk with splice(2). Request/response traffic on a long-lived connection
stays here however much it carries: its receives are small, and a splice pump costs two
splices and a wake-up of its task per message.

A socket is in the set only while it has something to wait for (its input is wanted,
or output is held for it): epoll always reports a hung-up socket, so one left in the
set with nothing to do would wake the engine in a loop.

An upstream with its own framing (a shadowsocks cipher) rides here too, as a
:class:`Codec` on its socket: the client's chunks are sealed into the engine's wire
buffer on their way up, the server's are received into the codec's own buffer and
opened there on their way down, all in the engine's pass, sans-IO. Such a flow also
goes back to its task once bulk: its stream's pumps carry bulk for less (measured:
the engine's pass costs more per chunk than a pump that reads until EAGAIN). Until the
codec has seen a first answer its flow waits at most until :meth:`Codec.answer_by`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import select
import socket
from typing import Final, Protocol

import attrs
import trio

from .idle import Activity
from .sock import set_reset_on_close

log = logging.getLogger("trio_tproxy.relay")

IN: Final = select.EPOLLIN
OUT: Final = select.EPOLLOUT
TROUBLE: Final = select.EPOLLERR | select.EPOLLHUP
MAX_EVENTS: Final = 256  # per pass; the rest wait for the next one
DECODE_BURST: Final = 8  # receives from one codec's socket per event at most (fairness)
# A direction whose receives average this much (a running mean; a quarter of what one
# receive can take, when that is less) is bulk once it carried splice_after: copying
# it costs more than a pump's wake-up per chunk. Not "a receive filled the buffer":
# that measures how far the engine lags the sender (a download slower than the engine
# never fills one), and a reload can grow the buffer past what a socket ever queues.
BULK_MEAN: Final = 8192
# TRIO_TPROXY_RELAY_ENGINE=off: the per-flow pumps only (for before/after benchmarks)
ENABLED: Final = os.environ.get("TRIO_TPROXY_RELAY_ENGINE", "on") != "off"


class Codec(Protocol):
    """An upstream socket whose bytes are transformed; every call is sync, from the
    engine's pass, and a failure is an OSError whose text is the flow's outcome."""

    sock: socket.socket

    def wire_size(self, n: int) -> int:
        """At most how many wire bytes :meth:`encode_into` makes of ``n``."""

    def encode_into(self, data: memoryview, out: memoryview) -> int:
        """The client's ``data`` sealed into ``out``; how many bytes it wrote."""

    def inbox(self) -> memoryview:
        """Where the upstream's next bytes are received."""

    def decode(self, n: int) -> memoryview:
        """``n`` more bytes are in the inbox: the plaintext now whole (maybe empty), a
        view valid until the next call."""

    def at_eof(self) -> None:
        """The upstream closed (raises when that is a failure: before any answer)."""

    def read_failed(self, exc: OSError) -> OSError:
        """What a failed receive from the upstream means (the error to report)."""

    def rest(self) -> None:
        """The upstream is drained for now: give buffers back while the flow waits."""

    def answer_by(self) -> float:
        """Until when (trio clock) a first answer must come; inf: no limit."""

    def unanswered(self) -> OSError | None:
        """At that deadline: the flow's failure, or None to wait on (it was answered,
        or the key was proven by another flow meanwhile)."""


class Counts(Protocol):
    """Where a flow's bytes and outcome are told (relay.RelayStats)."""

    up: int  # client -> server
    down: int
    outcome: str


@attrs.define(eq=False)
class Handoff:
    """A flow that turned bulk, back to its task: what each direction did so far."""

    activity: Activity
    finished: int  # directions done (EOF passed on)
    up_done: bool
    down_done: bool
    up_moved: int
    down_moved: int


class _Side:
    """One direction of a flow: ``src`` -> ``dst``."""

    __slots__ = ("decode", "done", "dst", "encode", "eof", "mean", "moved", "name", "pending",
                 "src", "then", "upward")  # fmt: skip

    def __init__(self, name: str, src: socket.socket, dst: socket.socket, then: float,
                 upward: bool) -> None:  # fmt: skip
        self.name, self.src, self.dst, self.then = name, src, dst, then
        self.upward = upward  # counted in the flow's stats.up (else .down)
        self.encode: Codec | None = None  # seals what goes to dst
        self.decode: Codec | None = None  # opens what comes from src
        self.pending: bytes | None = None  # read, not yet taken by dst
        self.eof = False  # src said EOF
        self.done = False  # ... and it was passed on (dst shut down for writing)
        self.moved = 0
        self.mean = 0  # running mean of the receives' sizes (weight 1/8 for the newest)


class _Flow:
    __slots__ = ("activity", "down", "ended", "finished", "handoff", "splice", "stats", "up",
                 "woken")  # fmt: skip

    def __init__(self, up: _Side, down: _Side, stats: Counts, splice: int | None) -> None:
        self.up, self.down, self.stats, self.splice = up, down, stats, splice
        self.finished = 0
        self.ended = False
        self.handoff = False
        self.woken = trio.Event()
        self.activity: Activity | None = None

    def expire(self) -> None:  # the idle clock's callback; the engine completes the flow
        self.stats.outcome = "idle timeout" if not self.finished else "half-closed timeout"


_ENGINE: trio.lowlevel.RunVar[RelayEngine] = trio.lowlevel.RunVar("trio_tproxy.relay_engine")


class RelayEngine:
    def __init__(self, buffer_size: int) -> None:
        self._epoll = select.epoll()
        self._by_fd: dict[int, tuple[_Flow, socket.socket]] = {}
        self._masks: dict[int, int] = {}  # what each socket is registered for (absent: not)
        self._buffer = bytearray(buffer_size)
        self._view = memoryview(self._buffer)
        self._wire = memoryview(bytearray(0))  # codecs seal into it (grown on demand)
        self.now = 0.0  # trio's clock at the start of the current pass
        self._changed = False  # this event changed a side's held bytes or EOF

    @classmethod
    def current(cls, buffer_size: int) -> RelayEngine | None:
        """This trio run's engine (started on first use); None when disabled."""
        if not ENABLED:
            return None
        try:
            engine = _ENGINE.get()
        except LookupError:
            engine = cls(buffer_size)
            _ENGINE.set(engine)
            trio.lowlevel.spawn_system_task(engine._run, name="trio_tproxy.relay_engine")
        if len(engine._buffer) < buffer_size:
            engine._buffer = bytearray(buffer_size)
            engine._view = memoryview(engine._buffer)
        return engine

    async def carry(
        self,
        client: socket.socket,
        upstream: socket.socket,
        *,
        idle: float,
        uplink_only: float,
        downlink_only: float,
        stats: Counts,
        splice_after: int | None,
        codec: Codec | None = None,
    ) -> Handoff | None:
        """Relay until the flow ends (None) or turns bulk (its state, for the pumps).
        ``codec``: the upstream's framing (its socket is ``upstream``)."""
        up = _Side("uplink", client, upstream, downlink_only, upward=True)
        down = _Side("downlink", upstream, client, uplink_only, upward=False)
        if codec is not None:
            up.encode = down.decode = codec
        flow = _Flow(up, down, stats, splice_after)

        def expire() -> None:
            flow.expire()
            self._complete(flow)

        flow.activity = activity = Activity(idle, expire)
        self._by_fd[client.fileno()] = (flow, client)
        self._by_fd[upstream.fileno()] = (flow, upstream)
        self._update(client, up, down)
        self._update(upstream, down, up)
        try:
            if codec is None:
                await flow.woken.wait()
            else:
                await self._wait_answered(flow, codec)
        except BaseException:  # cancelled (the API, the drain): out of the set at once
            self._complete(flow)
            activity.end()
            raise
        if flow.handoff:
            return Handoff(activity, flow.finished, up.done, down.done, up.moved, down.moved)
        activity.end()
        return None

    async def _wait_answered(self, flow: _Flow, codec: Codec) -> None:
        """The flow's end; but a codec's first answer must come by its deadline."""
        deadline = codec.answer_by()
        if deadline < math.inf:  # an unproven key (a proven one needs no cancel scope)
            with trio.move_on_at(deadline):
                await flow.woken.wait()
                return
            self._on_event(flow, flow.down.src, IN)  # an answer in by now (the same tick)
            failure = None if flow.ended else codec.unanswered()
            if failure is not None:
                self._fail(flow, flow.down, failure)
                return
        await flow.woken.wait()

    # -- the engine's task --------------------------------------------------------------

    async def _run(self) -> None:
        epoll = self._epoll
        while True:
            await trio.lowlevel.wait_readable(epoll)
            try:
                events = epoll.poll(0, MAX_EVENTS)
            except InterruptedError:
                continue
            self.now = trio.current_time()  # the pass's time: what a chunk touches
            for fd, mask in events:
                entry = self._by_fd.get(fd)
                if entry is None:
                    continue  # its flow ended earlier in this pass
                flow, sock = entry
                try:
                    self._on_event(flow, sock, mask)
                except Exception:  # a bug: this flow ends, the engine and the rest go on
                    log.exception("internal error relaying a flow")
                    if flow.stats.outcome == "done":
                        flow.stats.outcome = "internal error"
                    self._complete(flow)

    def _on_event(self, flow: _Flow, sock: socket.socket, mask: int) -> None:
        up, down = flow.up, flow.down
        reading, writing = (up, down) if sock is up.src else (down, up)
        # What the registrations follow (see _update) is a side's held bytes and EOF;
        # most passes take a chunk whole and change neither, and then the set is left
        # alone: the places that change them say so in _changed.
        self._changed = False
        if mask & (OUT | TROUBLE) and writing.pending is not None:
            self._flush(flow, writing)
        if not flow.ended and mask & (IN | TROUBLE) and not reading.eof \
                and reading.pending is None:  # fmt: skip
            self._pump(flow, reading)
        if self._changed and not flow.ended:
            self._update(up.src, up, down)
            self._update(down.src, down, up)

    def _pump(self, flow: _Flow, side: _Side) -> None:
        if side.decode is not None:
            self._pump_decoded(flow, side, side.decode)
            return
        try:
            n = side.src.recv_into(self._buffer)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(flow, side, exc)
            return
        if n == 0:
            side.eof = self._changed = True
            self._pass_eof(flow, side)
            return
        self._took(flow, side, n)
        out = self._view
        if side.encode is not None:
            if len(self._wire) < side.encode.wire_size(n):  # the buffer grew (a reload)
                self._wire = memoryview(bytearray(side.encode.wire_size(len(self._buffer))))
            try:
                n = side.encode.encode_into(out[:n], self._wire)
            except OSError as exc:
                self._fail(flow, side, exc)
                return
            out = self._wire
        self._send_on(flow, side, out[:n], len(self._buffer))

    def _took(self, flow: _Flow, side: _Side, n: int) -> None:
        """``n`` bytes of the client's (plaintext) came in on ``side``."""
        if side.upward:  # the counters the API shows live
            flow.stats.up += n
        else:
            flow.stats.down += n
        assert flow.activity is not None
        flow.activity.last = self.now  # touch(), without a clock read per chunk
        side.moved += n
        side.mean = (side.mean * 7 + n) >> 3

    def _send_on(self, flow: _Flow, side: _Side, data: memoryview, room: int) -> bool:
        """``data`` to ``side.dst``, what it does not take held aside. True when all of
        it went and the direction stays here (not failed, held, nor handed off).
        ``room``: how much the receive it came from could take."""
        try:
            sent = side.dst.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(flow, side, exc)
            return False
        if sent < len(data):
            side.pending = bytes(data[sent:])
            self._changed = True
            return False
        if flow.splice is not None and side.moved >= flow.splice \
                and side.mean >= min(room >> 2, BULK_MEAN):  # fmt: skip
            self._maybe_hand_off(flow)
            return False
        return True

    def _pump_decoded(self, flow: _Flow, side: _Side, codec: Codec) -> None:
        """Receives from a codec's socket until it is drained (at most
        :data:`DECODE_BURST`), and what they open goes to the client. Reading on while
        bytes keep coming saves a pass per receive: a codec's sender (the server's
        cipher) writes in pieces smaller than a receive."""
        for _ in range(DECODE_BURST):
            inbox = codec.inbox()
            try:
                try:
                    n = side.src.recv_into(inbox)
                except BlockingIOError:
                    break
                except OSError as exc:
                    raise codec.read_failed(exc) from exc
                if n == 0:
                    codec.rest()
                    codec.at_eof()
                    side.eof = self._changed = True
                    self._pass_eof(flow, side)
                    return
                plain = codec.decode(n)
            except OSError as exc:
                codec.rest()
                self._fail(flow, side, exc)
                return
            if not plain:
                continue
            self._took(flow, side, len(plain))
            if not self._send_on(flow, side, plain, len(inbox)):  # failed, held, or bulk
                break
        # drained, held aside, handed off, or the burst used up (the next event brings
        # the rest): a waiting flow holds no codec buffers
        codec.rest()

    def _flush(self, flow: _Flow, side: _Side) -> None:
        pending = side.pending
        assert pending is not None
        try:
            sent = side.dst.send(pending)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(flow, side, exc)
            return
        if sent < len(pending):
            side.pending = pending[sent:]
            return
        side.pending = None
        self._changed = True
        if side.eof:
            self._pass_eof(flow, side)
        elif flow.splice is not None and side.moved >= flow.splice:
            self._maybe_hand_off(flow)

    def _pass_eof(self, flow: _Flow, side: _Side) -> None:
        if side.pending is not None:
            return  # once what is held aside is out
        try:
            side.dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if side.encode is None:
                self._fail(flow, side, exc)
                return
            # a codec's server (its stream's send_eof): the half-close is best effort,
            # the other direction goes on until the server ends it
        side.done = True
        flow.finished += 1
        if flow.finished == 2:
            self._complete(flow)
            return
        assert flow.activity is not None
        flow.activity.shorten(side.then)

    def _maybe_hand_off(self, flow: _Flow) -> None:
        if flow.up.pending is None and flow.down.pending is None:
            flow.handoff = True
            self._complete(flow)

    def _fail(self, flow: _Flow, side: _Side, exc: OSError) -> None:
        if flow.stats.outcome == "done":
            flow.stats.outcome = f"{side.name} error: {exc.strerror or exc}"
        set_reset_on_close(side.src)
        set_reset_on_close(side.dst)
        self._complete(flow)

    def _complete(self, flow: _Flow) -> None:
        """Out of the set; the flow's task wakes (idempotent)."""
        if flow.ended:
            return
        flow.ended = True
        for sock in (flow.up.src, flow.down.src):
            self._unregister(sock)
        flow.woken.set()

    # -- the set ------------------------------------------------------------------------

    def _update(self, sock: socket.socket, reading: _Side, writing: _Side) -> None:
        """Register ``sock`` for what it waits for now: input while its direction is
        open and nothing of it is held aside; output while something is held for it."""
        want = 0
        if not reading.eof and reading.pending is None:
            want |= IN
        if writing.pending is not None:
            want |= OUT
        fd = sock.fileno()
        have = self._masks.get(fd)
        if want == (have or 0) and (have is not None or not want):
            return
        if not want:
            self._unregister(sock, keep_owner=True)
        elif have is None:
            self._epoll.register(fd, want)
            self._masks[fd] = want
        else:
            self._epoll.modify(fd, want)
            self._masks[fd] = want

    def _unregister(self, sock: socket.socket, *, keep_owner: bool = False) -> None:
        fd = sock.fileno()
        if fd < 0:
            return
        if self._masks.pop(fd, None) is not None:
            with contextlib.suppress(OSError):  # closed meanwhile
                self._epoll.unregister(fd)
        if not keep_owner:
            entry = self._by_fd.get(fd)
            if entry is not None and entry[1] is sock:
                del self._by_fd[fd]
