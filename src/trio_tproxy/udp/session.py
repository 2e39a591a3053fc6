"""One UDP session: a client source address, its flows to remotes, and its links.

Full cone, as Xray and sing-box do it: the session is keyed by the client's source
address alone. Each remote the client addresses is a *flow*, routed by the engine on
its first datagram(s) (network "udp", port, source and, with sniffing on, QUIC/DNS/...
sniffed from the first datagrams), and all flows routed to one outbound share that
outbound's *link* (direct: one upstream socket). So the client keeps one mapped
address towards every remote (endpoint-independent mapping), and any remote may answer
on it (endpoint-independent filtering): a reply from a remote the client never
addressed reaches the client too, from that remote's own address (``udp/replies.py``).

A flow's states: SETUP (sniffing, routing, its link opening; datagrams wait in a small
queue) -> OPEN (datagrams go straight to the link), or DROP (refused or unroutable).
A flow first seen through a reply is INBOUND until the client sends to that remote,
which then routes it like any other; a flow whose link ended is routed again.

Each flow gets one access-log line, in the TCP format, when its session ends.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from ..access import FlowRecord, log_access
from ..addr import Endpoint, SockAddr
from ..addr import show as show_addr
from ..config import Inbound
from ..inbound.sockopt import is_local_address
from ..limits import MAX_FLOWS_PER_SESSION, UdpCounters
from ..outbound.base import DatagramOutbound, UdpRequest, datagram_capable
from ..route import Decision, FlowFacts
from ..runtime import Runtime
from ..sniff import MAX_DATAGRAMS, NOT_THIS, Sniffed, sniff_datagrams
from ..tracking import TrackedFlow
from .flow import FlowState, LinkSlot, UdpFlow
from .lru import IdleLru

log = logging.getLogger("trio_tproxy.udp.session")

LOOP_REFUSAL = "refused: destination is an address of this gateway (loop)"


class ReplySender(Protocol):
    def send(self, remote: Endpoint, client: Endpoint, payload: memoryview) -> str | None: ...


@attrs.frozen
class SessionEnv:
    """What sessions share with their service (one per UDP inbound)."""

    inbound: Inbound
    nursery: trio.Nursery
    counters: UdpCounters
    buffer: bytearray  # the shared receive buffer (UdpRequest.buffer)
    replies: ReplySender
    touch: Callable[[UdpSession, float], None]  # activity: keeps the session from expiring
    warn_once: Callable[[str, str], None]  # (key, message)
    # Ends a session now and forgets it (the API's DELETE /connections).
    end: Callable[[UdpSession, str], None] = lambda session, why: session.finish(why)


class UdpSession:
    def __init__(self, env: SessionEnv, runtime: Runtime, client: Endpoint, now: float) -> None:
        self.env = env
        self.runtime = runtime
        self.client = client
        self.client_addr: SockAddr = (ipaddress.ip_address(client[0]), client[1])
        self.last = now
        self.flows: IdleLru[Endpoint, UdpFlow] = IdleLru()
        self.links: dict[str, LinkSlot] = {}
        self.closed = False
        self._scopes: set[trio.CancelScope] = set()

    # -- client -> remote (the hot path: synchronous, no allocation when OPEN) --------

    def from_client(self, payload: memoryview, dst: Endpoint, now: float) -> None:
        flows = self.flows
        flow = flows.get(dst)
        if flow is None:
            flow = self._new_flow(dst, now, FlowState.SETUP)
        else:  # IdleLru.touch, inlined: this runs for every datagram
            flow.last = now
            flows.move_to_end(dst)
        flow.up += len(payload)
        flow.up_datagrams += 1
        if flow.state is FlowState.OPEN:
            assert flow.link is not None
            if flow.link.ended is None or now < flow.link.retry_at:
                self._send(flow, payload)
                return
            self._setup(flow)  # its link ended (e.g. a proxy closed it): route again
        elif flow.state is FlowState.INBOUND:
            self._setup(flow)
        if flow.state is FlowState.SETUP:
            self._queue(flow, payload)
        else:
            self.env.counters.dropped += 1

    def _send(self, flow: UdpFlow, payload: memoryview) -> None:
        assert flow.link is not None
        reason = flow.link.send(flow, payload)
        if reason is not None:
            flow.drop(reason)
            self.env.counters.dropped += 1

    def _queue(self, flow: UdpFlow, payload: memoryview) -> None:
        reason = flow.hold(payload)
        if reason is not None:
            flow.drop(reason)
            self.env.counters.dropped += 1

    def _new_flow(self, remote: Endpoint, now: float, state: FlowState) -> UdpFlow:
        if len(self.flows) >= MAX_FLOWS_PER_SESSION:
            oldest = self.flows.pop_oldest()
            if oldest is not None:
                self._log(oldest[1], "forgotten (flow limit)")
        dst: SockAddr = (ipaddress.ip_address(remote[0]), remote[1])
        record = FlowRecord(self.client_addr, dst, self.env.inbound.tag, started=now)
        flow = UdpFlow(remote, record, state)
        flow.tracked = self.runtime.tracker.add(TrackedFlow(
            "udp", self.env.inbound.TYPE, record, flow, lambda: self.env.end(self, "closed by API")
        ))  # fmt: skip
        self.flows.add(remote, flow, now)
        self.env.counters.flows += 1
        if state is FlowState.SETUP:
            self._setup(flow)
        return flow

    def _setup(self, flow: UdpFlow) -> None:
        flow.link = None
        refusal = _refusal(flow.record.dst)
        if refusal is not None:
            flow.state, flow.outcome = FlowState.DROP, refusal
            if refusal == LOOP_REFUSAL:
                self.env.counters.refused_loop += 1
                self.env.warn_once(
                    f"loop {flow.remote[0]}",
                    f"UDP to {flow.remote[0]} refused: it is an address of this gateway, so "
                    "relaying would loop; the diversion ruleset should return traffic for "
                    "the gateway itself before TPROXY (e.g. `fib daddr type local return`)",
                )
            return
        flow.state = FlowState.SETUP
        self.spawn(self._route, flow)

    # -- setup: sniff, route, link ----------------------------------------------------

    async def _route(self, flow: UdpFlow) -> None:
        try:
            await self._route_flow(flow)
        except Exception:  # a bug: this flow is dropped, nothing else is affected
            log.exception("internal error routing UDP %s -> %s", show_addr(self.client),
                          show_addr(flow.remote))  # fmt: skip
            flow.state, flow.outcome = FlowState.DROP, "internal error"

    async def _route_flow(self, flow: UdpFlow) -> None:
        rt, inbound, record = self.runtime, self.env.inbound, flow.record
        sniffed = await self._sniff(flow) if inbound.sniffing.enabled else None
        override = None
        if sniffed is not None:
            record.protocol, record.domain = sniffed.protocol, sniffed.domain
            override = rt.sniff_override(inbound, sniffed)
        # A name we resolved for the client routes the flow when sniffing saw none
        # (as session.handle_tcp does for TCP).
        learnt = None
        if record.domain is None and rt.dns.reverse is not None:
            learnt = record.domain = rt.dns.reverse.lookup(record.dst[0])
        facts = FlowFacts(
            network="udp",
            dst_ip=None if override else record.dst[0],
            dst_port=record.dst[1],
            domain=override or learnt,
            src_ip=self.client_addr[0],
            src_port=self.client_addr[1],
            inbound_tag=inbound.tag,
            protocol=record.protocol,
        )
        record.decision = decision = await rt.decide(facts)
        flow.dial_domain = None if inbound.sniffing.route_only else override
        outbound = datagram_capable(rt.outbounds[decision.outbound])
        if outbound is None:
            kind = rt.config.outbound(decision.outbound).TYPE
            flow.state = FlowState.DROP
            flow.outcome = f"refused: outbound {decision.outbound!r} does not carry UDP"
            self.env.warn_once(
                f"no udp {decision.outbound}",
                f"outbound {decision.outbound!r} ({kind}) does not carry UDP: UDP flows "
                "routed to it are dropped",
            )
            return
        flow.link = self._link_for(decision, outbound, flow.remote)
        flow.state = FlowState.OPEN
        pending, flow.pending, flow.pending_bytes = flow.pending, [], 0
        for data in pending:
            self._send(flow, memoryview(data))

    async def _sniff(self, flow: UdpFlow) -> Sniffed | None:
        deadline = trio.current_time() + self.env.inbound.sniffing.timeout.seconds
        while True:
            outcome = sniff_datagrams(flow.pending[:MAX_DATAGRAMS])
            if isinstance(outcome, Sniffed):
                return outcome
            if outcome is NOT_THIS or len(flow.pending) >= MAX_DATAGRAMS:
                return None
            flow.arrived = trio.Event()
            with trio.move_on_at(deadline) as scope:
                await flow.arrived.wait()
            flow.arrived = None
            if scope.cancelled_caught:
                return None

    def _link_for(
        self, decision: Decision, outbound: DatagramOutbound, first_dst: Endpoint
    ) -> LinkSlot:
        slot = self.links.get(decision.outbound)
        if slot is None or slot.ended is not None:
            slot = self.links[decision.outbound] = LinkSlot(decision)
            self.spawn(self._run_link, slot, outbound, first_dst)
        return slot

    async def _run_link(
        self, slot: LinkSlot, outbound: DatagramOutbound, first_dst: Endpoint
    ) -> None:
        timeout = self.runtime.flow_context.handshake_timeout
        request = UdpRequest(self.client, first_dst, self.env.buffer, timeout)
        try:
            with trio.fail_after(timeout):
                link = await outbound.open_udp(request)
        except (OSError, trio.TooSlowError) as exc:
            reason = str(exc) if isinstance(exc, OSError) else "link open timed out"
            self.env.counters.dropped += slot.end(reason)
            return
        slot.link = link
        try:
            queue, slot.queue, slot.queued_bytes = slot.queue, [], 0
            for flow, data in queue:
                if flow.link is slot:  # not re-routed meanwhile
                    self._send(flow, memoryview(data))
            await link.receive(lambda payload, remote: self.from_remote(slot, payload, remote))
            slot.end("link closed")
        except OSError as exc:
            slot.end(f"link error: {exc.strerror or exc}")
        finally:
            link.close()

    # -- remote -> client ----------------------------------------------------------------

    def from_remote(self, slot: LinkSlot, payload: memoryview, remote: Endpoint) -> None:
        if self.closed:
            return
        now = trio.current_time()
        counters = self.env.counters
        counters.datagrams_down += 1
        counters.bytes_down += len(payload)
        flow = self.flows.get(remote)
        if flow is None:  # full cone: a remote the client never addressed (or forgot)
            flow = self._new_flow(remote, now, FlowState.INBOUND)
            flow.record.decision = slot.decision
        else:
            self.flows.touch(remote, flow, now)
        flow.down += len(payload)
        flow.down_datagrams += 1
        self.env.touch(self, now)
        reason = self.env.replies.send(remote, self.client, payload)
        if reason is not None:
            flow.drop(reason)
            counters.dropped += 1

    # -- tasks and the end -------------------------------------------------------------

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run ``fn`` in the service's nursery, cancelled when this session ends."""
        scope = trio.CancelScope()
        self._scopes.add(scope)

        async def run() -> None:
            try:
                with scope:
                    await fn(*args)
            except Exception:
                log.exception("internal error in UDP session %s", show_addr(self.client))
            finally:
                self._scopes.discard(scope)

        self.env.nursery.start_soon(run)

    def finish(self, ended: str) -> None:
        """End the session: stop its tasks, close its links, log each flow."""
        if self.closed:
            return
        self.closed = True
        for scope in self._scopes:
            scope.cancel()
        for slot in self.links.values():
            if slot.link is not None:
                slot.link.close()
        for flow in self.flows.values():
            self._log(flow, ended)

    def _log(self, flow: UdpFlow, ended: str) -> None:
        if flow.state is FlowState.SETUP and flow.outcome is None:
            flow.outcome = f"{ended} during setup"
        flow.record.chain = flow.chain  # a group names its member: auto[ss-hk]
        if flow.tracked is not None:
            self.runtime.tracker.remove(flow.tracked, flow.final_outcome(ended))
        if not self.runtime.config.log.access:
            return
        log_access(
            flow.record, "udp", flow.up, flow.down, flow.final_outcome(ended),
            detail=f" datagrams={flow.up_datagrams}/{flow.down_datagrams}",
        )  # fmt: skip


def _refusal(dst: SockAddr) -> str | None:
    ip = dst[0]
    if ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        return "refused: multicast/broadcast destination"
    try:
        local = is_local_address(ip)
    except OSError:
        local = False
    return LOOP_REFUSAL if local else None
