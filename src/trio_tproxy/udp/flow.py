"""A UDP flow (one client source to one remote) and a link slot (one outbound's link).

Plain state holders for ``udp/session.py``: a flow's routing record, counters and the
datagrams waiting while it is set up; a slot's link and the datagrams waiting while it
opens. Both queues are bounded; what does not fit is dropped and counted.
"""

from __future__ import annotations

import enum
import math

import attrs
import trio

from ..access import FlowRecord
from ..addr import Endpoint
from ..outbound.base import UdpLink
from ..route import Decision
from ..tracking import TrackedFlow

# Datagrams waiting while a flow is set up: a QUIC first flight (sniff.MAX_DATAGRAMS)
# and a resolver round trip's worth, bounded so a flood of new flows cannot pin memory
# (v2ray: a 16 KiB pipe per session, overflow dropped).
MAX_PENDING_DATAGRAMS = 32
MAX_PENDING_BYTES = 128 * 1024
# After a link failed or ended, its flows' datagrams are dropped for this long before
# one routes again and opens a new link: a dead upstream costs one attempt per second,
# not one per datagram.
LINK_RETRY = 1.0


class FlowState(enum.Enum):
    SETUP = "setup"
    OPEN = "open"
    DROP = "drop"
    INBOUND = "inbound"


@attrs.define(eq=False)
class UdpFlow:
    remote: Endpoint
    record: FlowRecord
    state: FlowState
    link: LinkSlot | None = None
    dial_domain: str | None = None  # the sniffed domain the outbound should use
    pending: list[bytes] = attrs.field(factory=list)
    pending_bytes: int = 0
    arrived: trio.Event | None = None  # set per queued datagram while sniffing waits
    up: int = 0
    down: int = 0
    up_datagrams: int = 0
    down_datagrams: int = 0
    dropped: int = 0
    drop_reason: str = ""
    outcome: str | None = None  # why the flow is DROP, or how its setup failed
    last: float = 0.0
    tracked: TrackedFlow | None = None  # its entry in the runtime's FlowTracker (the API)

    @property
    def chain(self) -> tuple[str, ...]:
        """The outbound carrying the flow, then its groups (the link's, if it says)."""
        slot = self.link
        if slot is None:
            return ()
        chain: tuple[str, ...] = getattr(slot.link, "chain", ())
        return chain or (slot.decision.outbound,)

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.drop_reason = reason

    def hold(self, payload: memoryview) -> str | None:
        """Keep a datagram until the flow is routed; None, or why it cannot be kept."""
        if len(self.pending) >= MAX_PENDING_DATAGRAMS or (
            self.pending_bytes + len(payload) > MAX_PENDING_BYTES
        ):
            return "queue full during setup"
        self.pending.append(bytes(payload))
        self.pending_bytes += len(payload)
        if self.arrived is not None:
            self.arrived.set()
        return None

    def final_outcome(self, ended: str) -> str:
        if self.outcome is not None:
            return self.outcome
        if self.link is not None and self.link.outcome is not None:
            return self.link.outcome
        if self.dropped:
            return f"{ended}; {self.dropped} dropped ({self.drop_reason})"
        return ended


@attrs.define(eq=False)
class LinkSlot:
    """One outbound's link for a session: opening (datagrams queue), open, or ended."""

    decision: Decision  # its outbound is this link's
    link: UdpLink | None = None
    queue: list[tuple[UdpFlow, bytes]] = attrs.field(factory=list)
    queued_bytes: int = 0
    ended: str | None = None  # why it carries nothing more (failed to open, closed)
    retry_at: float = math.inf  # when a flow of an ended link may open a new one

    @property
    def outcome(self) -> str | None:
        return self.link.outcome if self.link is not None else None

    def end(self, reason: str) -> int:
        """No more datagrams through this link; returns how many queued ones are lost."""
        self.ended = reason
        self.retry_at = trio.current_time() + LINK_RETRY
        lost = len(self.queue)
        for flow, _ in self.queue:
            flow.drop(reason)
        self.queue.clear()
        self.queued_bytes = 0
        return lost

    def send(self, flow: UdpFlow, payload: memoryview) -> str | None:
        if self.link is not None and self.ended is None:
            return self.link.send(payload, flow.remote, flow.dial_domain)
        if self.ended is not None:
            return self.ended
        if len(self.queue) >= MAX_PENDING_DATAGRAMS or (
            self.queued_bytes + len(payload) > MAX_PENDING_BYTES
        ):
            return "queue full while the link opens"
        self.queue.append((flow, bytes(payload)))
        self.queued_bytes += len(payload)
        return None
