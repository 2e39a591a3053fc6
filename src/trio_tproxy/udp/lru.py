"""A table in least-recently-active order: O(1) touch, LRU eviction, idle expiry. Pure.

The session table and the reply-socket cache are both this. Keeping entries ordered by
their last activity (``move_to_end`` on every datagram) makes the two questions a
gateway asks cheap: "who goes when the table is full" is the head, and "who has been
idle for ``idle`` seconds" is a prefix of the order, so expiry never scans live entries
(sing-box's udpnat and ss-rust's reply cache are LRUs for the same reason).

It *is* an ``OrderedDict``: the per-datagram path calls ``get`` and ``touch`` and
nothing else, and C-level dict methods are what keep that path cheap.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol, TypeVar


class Timed(Protocol):
    last: float  # when the entry last saw activity (any clock, as long as it is one)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V", bound=Timed)


class IdleLru(OrderedDict[K, V]):
    def add(self, key: K, value: V, now: float) -> None:
        """Insert (or replace) ``key`` as the most recently active entry."""
        value.last = now
        self[key] = value
        self.move_to_end(key)

    def touch(self, key: K, value: V, now: float) -> None:
        value.last = now
        self.move_to_end(key)

    def pop_oldest(self) -> tuple[K, V] | None:
        return self.popitem(last=False) if self else None

    def pop_idle(self, now: float, idle: float) -> list[tuple[K, V]]:
        """Remove and return the entries idle for ``idle`` seconds or more (oldest first)."""
        expired: list[tuple[K, V]] = []
        while self:
            key, value = next(iter(self.items()))
            if value.last + idle > now:
                break
            del self[key]
            expired.append((key, value))
        return expired

    def next_expiry(self, idle: float) -> float | None:
        """When the oldest entry expires if nothing touches it; None when empty."""
        if not self:
            return None
        return next(iter(self.values())).last + idle
