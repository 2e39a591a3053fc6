"""The flows the controller API shows and closes, wherever they run.

One process answers from its own tracker (:class:`LocalFlows`); the hub of a gateway
with worker processes asks every worker (workers/hub.py) through the same interface.
Everything is async for that reason, and JSON-able so a worker can send it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from ..runtime import Runtime
from ..udp.service import UdpService
from . import metrics, shapes

JsonObject = dict[str, Any]


class FlowsView(Protocol):
    async def connections(self) -> JsonObject: ...  # mihomo's GET /connections body

    async def totals(self) -> tuple[int, int]: ...  # (upload, download): only grows

    async def close(self, flow_id: str) -> bool: ...

    async def close_all(self) -> int: ...

    async def metrics(self) -> metrics.Samples: ...

    async def memory(self) -> int: ...  # resident bytes of every process serving flows


class LocalFlows:
    """This process's flows."""

    def __init__(self, runtime: Callable[[], Runtime], udp_services: Sequence[UdpService]):
        self._runtime = runtime
        self._udp_services = udp_services

    async def connections(self) -> JsonObject:
        return shapes.connections(self._runtime())

    async def totals(self) -> tuple[int, int]:
        return self._runtime().tracker.totals()

    async def close(self, flow_id: str) -> bool:
        return self._runtime().tracker.close(flow_id)

    async def close_all(self) -> int:
        return self._runtime().tracker.close_all()

    async def metrics(self) -> metrics.Samples:
        return metrics.samples(self._runtime(), self._udp_services)

    async def memory(self) -> int:
        return metrics.rss_bytes()
