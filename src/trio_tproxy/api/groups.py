"""What the API needs of groups and health checks, as duck-typed protocols.

The shapes are the groups/API contract (GROUPS-API-CONTRACT.md): a group outbound has
``kind``, ``members``, ``current()``, ``select()``, ``probe_all()``; the runtime's
``health`` book keeps each outbound's last probes. Nothing here imports the group
implementation: an outbound is a group when it has these members, and a runtime without
a health book simply shows no history.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, runtime_checkable

GROUP_KINDS = frozenset({"selector", "urltest", "fallback"})


class DelaySample(Protocol):
    @property
    def time(self) -> float: ...  # unix time of the probe

    @property
    def delay(self) -> int: ...  # milliseconds; 0: the probe failed


class HealthBook(Protocol):
    def record(self, tag: str, delay: int | None, when: float | None = None) -> None: ...

    def history(self, tag: str) -> Sequence[DelaySample]: ...

    def last_delay(self, tag: str) -> int | None: ...

    def alive(self, tag: str) -> bool: ...


@runtime_checkable
class Group(Protocol):
    tag: str
    kind: str
    members: tuple[str, ...]
    url: str
    timeout: float

    def current(self) -> str: ...

    def select(self, member: str) -> None: ...

    async def probe_all(self) -> dict[str, int]: ...


# probe_delay(outbound, url, timeout_seconds) -> ms; TimeoutError on timeout, OSError on
# failure (outbound/health.py's, wired by the application).
DelayProber = Callable[[object, str, float], Awaitable[int]]


def as_group(outbound: object) -> Group | None:
    if isinstance(outbound, Group) and outbound.kind in GROUP_KINDS:
        return outbound
    return None


def health_of(runtime: object) -> HealthBook | None:
    book = getattr(runtime, "health", None)
    return book if book is not None and callable(getattr(book, "history", None)) else None
