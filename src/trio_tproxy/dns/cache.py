"""The answer cache (TTL-bound, size-bound LRU) and the de-duplication of queries in flight.

:class:`TtlCache` is plain data with the clock passed in, so its tests need no event
loop. :class:`Inflight` makes concurrent identical lookups share one upstream query:
the first caller does the work, the others wait for its result. If the first caller
is cancelled (its client went away) or fails, the waiters do the work themselves
rather than inherit a failure that was not theirs.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

import attrs
import trio

__all__ = ["NEGATIVE_TTL_MAX", "Inflight", "TtlCache"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# RFC 2308 section 5 suggests 1-3 hours at most for negative answers; a gateway that
# caches a transient NXDOMAIN for hours looks broken, so ours are capped at 5 minutes.
NEGATIVE_TTL_MAX = 300


class TtlCache(Generic[K, V]):
    """At most ``size`` entries; each lives for its TTL clamped to [min_ttl, max_ttl]
    (negative answers also to :data:`NEGATIVE_TTL_MAX`); the least recently used goes
    first when full. ``size`` 0 disables caching."""

    def __init__(self, size: int, min_ttl: float = 0.0, max_ttl: float = 86400.0) -> None:
        self.size = size
        self.min_ttl = min_ttl
        self.max_ttl = max_ttl
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, now: float) -> tuple[V, float] | None:
        """The value and its remaining seconds, or None (missing or expired)."""
        found = self._entries.get(key)
        if found is None:
            return None
        expires, value = found
        if expires <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value, expires - now

    def ttl_for(self, ttl: float, *, negative: bool = False) -> float:
        bounded = min(max(ttl, self.min_ttl), self.max_ttl)
        return min(bounded, NEGATIVE_TTL_MAX) if negative else bounded

    def put(self, key: K, value: V, ttl: float, now: float, *, negative: bool = False) -> float:
        """Store ``value``; returns the TTL it got (0: not stored)."""
        lifetime = self.ttl_for(ttl, negative=negative)
        if self.size <= 0 or lifetime <= 0:
            return 0.0
        self._entries[key] = (now + lifetime, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return lifetime

    def clear(self) -> None:
        self._entries.clear()

    def carry_over(self, other: TtlCache[K, V], keep: Callable[[K, V], bool], now: float) -> int:
        """Take ``other``'s live entries that ``keep`` accepts, with their expiry and in
        their recency order (a reload keeps what still holds); returns how many."""
        if self.size <= 0:
            return 0
        taken = 0
        for key, (expires, value) in list(other._entries.items()):  # oldest first
            if expires > now and keep(key, value):
                self._entries[key] = (expires, value)
                self._entries.move_to_end(key)
                taken += 1
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return min(taken, len(self._entries))


@attrs.define
class _Pending(Generic[V]):
    done: trio.Event = attrs.Factory(trio.Event)
    value: V | None = None
    ok: bool = False


class Inflight(Generic[K, V]):
    """Concurrent calls of :meth:`run` with one key share the first caller's result."""

    def __init__(self) -> None:
        self._pending: dict[K, _Pending[V]] = {}
        self.shared = 0  # callers served by another caller's query (tests, stats)

    def __len__(self) -> int:
        return len(self._pending)

    async def run(self, key: K, fetch: Callable[[], Awaitable[V]]) -> V:
        pending = self._pending.get(key)
        if pending is not None:
            await pending.done.wait()
            if pending.ok:
                self.shared += 1
                return pending.value  # type: ignore[return-value]
            return await fetch()
        pending = _Pending()
        self._pending[key] = pending
        try:
            value = await fetch()
            pending.value, pending.ok = value, True
            return value
        finally:
            del self._pending[key]
            pending.done.set()
