"""DNS over datagrams: what the UDP listener and the ``dns`` outbound's UDP links share.

Each datagram is one query. A query the cache or ``hosts`` can answer is answered at
once, from the receive loop itself (no task, no scheduler round trip: most queries are
these); one that needs an upstream gets a task of its own, at most ``limit`` at a time.
More are dropped: the client's resolver retries, and a flood cannot queue without bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import trio

__all__ = ["DatagramQueries", "QuickAnswerer"]

Peer = TypeVar("Peer")


class QuickAnswerer(Protocol):
    """What answering needs of the splitter (dns/service.py implements it)."""

    def answer_now(self, data: bytes, *, udp: bool) -> bytes | None: ...

    async def answer(self, data: bytes, *, udp: bool) -> bytes | None: ...


class DatagramQueries(Generic[Peer]):
    """Client queries answered from the cache now, else by a bounded number of tasks.

    ``service`` is asked per query (the listener's follows reloads); ``reply(answer,
    peer)`` sends an answer back; ``on_overload(waiting)`` is told once per run of
    dropped queries (until a query gets its task again).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        service: Callable[[], QuickAnswerer],
        reply: Callable[[bytes, Peer], None],
        *,
        limit: int,
        on_overload: Callable[[int], None] | None = None,
    ) -> None:
        self.waiting = 0  # queries in a task of their own, waiting for upstreams
        self._nursery = nursery
        self._service = service
        self._reply = reply
        self._limit = limit
        self._on_overload = on_overload
        self._overloaded = False

    def take(self, data: bytes, peer: Peer) -> None:
        """Answer ``data`` now, or start its task, or drop it (``limit`` tasks wait)."""
        quick = self._service().answer_now(data, udp=True)
        if quick is not None:
            self._reply(quick, peer)
            return
        if self.waiting >= self._limit:
            if not self._overloaded and self._on_overload is not None:
                self._on_overload(self.waiting)
            self._overloaded = True
            return
        self._overloaded = False
        self.waiting += 1
        self._nursery.start_soon(self._answer, data, peer)

    async def _answer(self, data: bytes, peer: Peer) -> None:
        try:
            reply = await self._service().answer(data, udp=True)
        finally:
            self.waiting -= 1
        if reply is not None:
            self._reply(reply, peer)
