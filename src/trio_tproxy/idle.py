"""The relays' inactivity clocks, watched by one task per trio run instead of one per flow.

A flow's :class:`Activity` is touched per chunk (a float store). Watching it used to
take a task per flow, asleep in a cancel scope until the flow's deadline: with the
Event it waited on, about a fifth of what an idle flow holds (a task, two frames, a
cancel scope and its status, an event and its parking lot). Here a single system
task keeps a heap of (deadline, activity) and sleeps until the earliest one; woken,
it re-reads each due activity's ``last`` and either expires it or files it again
under its real deadline, so the timers are exact (v2ray's are only to within one
timeout) at the cost of one heap entry per flow.

A flow that ends leaves its entry behind (heaps cannot remove from the middle); the
entry is dropped when it comes due, and the heap is rebuilt without such entries
once they outnumber the live ones, so a burst of short flows cannot grow it
without bound. An ended activity lets go of its expiry callback (and so of the
flow) at once.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
from collections.abc import Callable

import trio

log = logging.getLogger("trio_tproxy.idle")

# Rebuild the heap once it holds this many more entries than twice the live flows.
COMPACT_SLACK = 1024


class Activity:
    """One flow's inactivity clock: ``timeout`` without :meth:`touch` calls ``on_expire``
    (once, from the clock's task), unless :meth:`end` came first."""

    __slots__ = ("_clock", "last", "on_expire", "timeout")

    def __init__(self, timeout: float, on_expire: Callable[[], object] | None = None) -> None:
        self.timeout = timeout
        self.last = trio.current_time()
        self.on_expire = on_expire
        self._clock = IdleClock.current() if on_expire is not None else None
        if self._clock is not None:
            self._clock.start(self)

    @property
    def ended(self) -> bool:
        return self.on_expire is None

    def touch(self) -> None:
        self.last = trio.current_time()

    def shorten(self, timeout: float) -> None:
        """From now on, at most ``timeout`` of inactivity (a half-closed flow)."""
        self.timeout = min(self.timeout, timeout)
        self.touch()
        if self._clock is not None and self.on_expire is not None:
            self._clock.push(self, self.last + self.timeout)

    def end(self) -> None:
        """The flow is over: never expire, and drop the callback (idempotent)."""
        if self.on_expire is not None:
            self.on_expire = None
            if self._clock is not None:
                self._clock.ended()


_CLOCK: trio.lowlevel.RunVar[IdleClock] = trio.lowlevel.RunVar("trio_tproxy.idle_clock")


class IdleClock:
    """The heap of deadlines and the system task that serves it (one per trio run)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Activity]] = []
        self._order = itertools.count()  # ties: never compare two activities
        self._live = 0
        self._sleep = trio.CancelScope()

    @classmethod
    def current(cls) -> IdleClock:
        try:
            return _CLOCK.get()
        except LookupError:
            clock = cls()
            _CLOCK.set(clock)
            trio.lowlevel.spawn_system_task(clock._run, name="trio_tproxy.idle_clock")
            return clock

    def start(self, activity: Activity) -> None:
        self._live += 1
        self.push(activity, activity.last + activity.timeout)

    def push(self, activity: Activity, deadline: float) -> None:
        heapq.heappush(self._heap, (deadline, next(self._order), activity))
        # wake earlier if need be; only then, as setting a trio deadline costs ~1.2 us
        if deadline < self._sleep.deadline:  # noqa: PLR1730 (min() would always set it)
            self._sleep.deadline = deadline

    def ended(self) -> None:
        self._live -= 1
        if len(self._heap) > 2 * self._live + COMPACT_SLACK:
            self._heap = [entry for entry in self._heap if entry[2].on_expire is not None]
            heapq.heapify(self._heap)

    def _expire_due(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] <= now:
            _, _, activity = heapq.heappop(heap)
            on_expire = activity.on_expire
            if on_expire is None:
                continue  # the flow ended
            deadline = activity.last + activity.timeout
            if deadline > now:
                heapq.heappush(heap, (deadline, next(self._order), activity))
                continue
            activity.end()
            try:
                on_expire()
            except Exception:  # a system task must not raise: that would end the run
                log.exception("idle timeout callback failed")

    async def _run(self) -> None:
        while True:
            self._expire_due(trio.current_time())
            self._sleep = trio.CancelScope(deadline=self._heap[0][0] if self._heap else math.inf)
            with self._sleep:
                await trio.sleep_forever()
