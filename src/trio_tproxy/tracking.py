"""Live flows, for the controller API and /metrics: what is open now, what has ended.

The hot path pays nothing here. A flow is registered once when it is routed and
unregistered once when it ends; its byte counts stay where the relay already keeps them
(``RelayStats`` for TCP, ``UdpFlow`` for UDP) and are only read when someone asks for a
snapshot. The totals of ended flows move into plain integer counters at unregister
time, so ``upload_total``/``download_total`` and the per-outbound byte counters only
ever grow, as mihomo's ``uploadTotal``/``downloadTotal`` and Prometheus counters must.

Shared by session.py (TCP) and udp/ (UDP sessions), below both, like access.py.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Protocol

import attrs

from .access import FlowRecord


class FlowCounts(Protocol):
    """Where a flow's bytes are counted (RelayStats, a TcpFlow, a UdpFlow)."""

    @property
    def up(self) -> int: ...

    @property
    def down(self) -> int: ...

    @property
    def chain(self) -> tuple[str, ...]: ...


@attrs.define(eq=False)
class TrackedFlow:
    """One open flow as the API shows it; ``close`` resets it at once."""

    network: str  # "tcp" | "udp"
    inbound_type: str  # the inbound's config type: "tproxy" | "redirect"
    record: FlowRecord
    counts: FlowCounts
    close: Callable[[], None]
    start: float = attrs.field(factory=time.time)  # wall clock, for the API's RFC 3339
    _id: str | None = None

    @property
    def id(self) -> str:
        """mihomo's connection id (a UUID), made when first asked: most flows never are,
        and a uuid4 costs more than the rest of registering a flow."""
        if self._id is None:
            self._id = str(uuid.uuid4())
        return self._id

    @property
    def chain(self) -> tuple[str, ...]:
        """mihomo order: the outbound that carries the flow first, then the groups."""
        chain = self.counts.chain
        if chain:
            return chain
        decision = self.record.decision
        return (decision.outbound,) if decision is not None else ()


def outcome_class(outcome: str) -> str:
    """A bounded label for an access-log outcome (Prometheus labels must not explode)."""
    if outcome in ("done", "idle timeout", "half-closed timeout", "link closed"):
        return "ok"
    if outcome.startswith(("refused", "blocked", "block")):
        return "refused"
    if outcome == "closed by API":
        return "closed"
    if outcome == "cancelled" or outcome.startswith("stopped"):
        return "cancelled"
    if "timeout" in outcome or "timed out" in outcome:
        return "timeout"
    return "error"


def error_kind(outcome: str) -> str:
    """A bounded error label: which side broke, or the dial's failure."""
    for kind in ("uplink error", "downlink error", "client error", "link error"):
        if outcome.startswith(kind):
            return kind.replace(" ", "_")
    if "timed out" in outcome or "timeout" in outcome:
        return "timeout"
    if outcome == "internal error":
        return "internal"
    return "dial"


class FlowTracker:
    """Every open flow by id, and counters of the ended ones (kept across reloads)."""

    def __init__(self) -> None:
        self.flows: dict[int, TrackedFlow] = {}  # by id() of the entry, in start order
        self.ended_up = 0
        self.ended_down = 0
        self.ended_bytes: Counter[tuple[str, str]] = Counter()  # (outbound, "up"|"down")
        self.ended_flows: Counter[tuple[str, str, str, str]] = Counter()
        self.sniffed: Counter[str] = Counter()  # protocol ("none": nothing recognised)
        self.errors: Counter[str] = Counter()  # error_kind

    def add(self, flow: TrackedFlow) -> TrackedFlow:
        self.flows[id(flow)] = flow
        return flow

    def remove(self, flow: TrackedFlow, outcome: str) -> None:
        if self.flows.pop(id(flow), None) is None:
            return
        up, down = flow.counts.up, flow.counts.down
        self.ended_up += up
        self.ended_down += down
        outbound = _outbound(flow)
        self.ended_bytes[outbound, "up"] += up
        self.ended_bytes[outbound, "down"] += down
        cls = outcome_class(outcome)
        self.ended_flows[outbound, flow.record.inbound, flow.network, cls] += 1
        self.sniffed[flow.record.protocol or "none"] += 1
        if cls in ("error", "timeout"):
            self.errors[error_kind(outcome)] += 1

    def totals(self) -> tuple[int, int]:
        """(upload, download) of every flow so far, open ones included: only grows."""
        up, down = self.ended_up, self.ended_down
        for flow in self.flows.values():
            up += flow.counts.up
            down += flow.counts.down
        return up, down

    def bytes_by_outbound(self) -> Counter[tuple[str, str]]:
        total = Counter(self.ended_bytes)
        for flow in self.flows.values():
            outbound = _outbound(flow)
            total[outbound, "up"] += flow.counts.up
            total[outbound, "down"] += flow.counts.down
        return total

    def close(self, flow_id: str) -> bool:
        for flow in list(self.flows.values()):
            if flow.id == flow_id:
                flow.close()
                return True
        return False

    def close_all(self) -> int:
        flows = list(self.flows.values())
        for flow in flows:
            flow.close()
        return len(flows)

    def __iter__(self) -> Iterator[TrackedFlow]:
        return iter(list(self.flows.values()))


def _outbound(flow: TrackedFlow) -> str:
    chain = flow.chain
    return chain[0] if chain else "-"
