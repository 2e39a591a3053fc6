"""Group outbounds: ``selector``, ``urltest`` and ``fallback`` choose one member per flow.

A group is an ordinary outbound: ``open_stream`` / ``open_udp`` ask the member chosen
*when the flow starts* and hand back its upstream, so a flow (or a UDP link: one client
source through this group) keeps that member for its whole life, whatever the probes
say later. The upstream's chain is the member's chain then the group's tag, outbound
first as mihomo shows it: ``("ss-hk", "auto")``.

The choice itself is pure (:mod:`.group_choice`) over the probe history in the
:class:`HealthBook`. Each group probes all its members every ``interval`` in the
background (:func:`probe_groups`, run by the gateway), members no flow uses included,
so a recovered member is noticed. What must outlive a reload lives in
:class:`GroupState`: the probe history, the choices made so far (urltest's tolerance
compares against the current choice), selector choices (persisted, selections.py).

When every member is down, a flow fails at once with a DialError naming the group,
instead of waiting out a dead proxy's handshake; the log says so once per outage.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from collections.abc import Awaitable, Callable, Mapping

import trio

from ..config import GroupOutbound as GroupConfig
from ..config import UrltestOutbound as UrltestConfig
from ..dial import DialError
from ..resolver import Resolver
from .base import Destination, UdpLink, UdpRequest, Upstream, datagram_capable, stream_capable
from .group_choice import GroupView, choose, show_delays
from .health import HealthBook, probe_delay
from .selections import SelectionStore

log = logging.getLogger("trio_tproxy.outbound.group")

# Probes of one round start this far apart (or closer, so a round fits in a tenth of
# the interval): a group of 50 members opens 50 connections over 2.5 s, not at once.
PROBE_GAP = 0.05
# Groups start their first round spread over this many seconds, for the same reason.
START_SPREAD = 1.0

Probe = Callable[[object, str, float], Awaitable[int]]


class GroupState:
    """Everything about groups that a reload keeps (one per gateway)."""

    def __init__(self, health: HealthBook | None = None,
                 selections: SelectionStore | None = None) -> None:  # fmt: skip
        self.health = health or HealthBook()
        self.selections = selections or SelectionStore.default()
        self.picks: dict[str, str] = {}  # group -> its choice so far
        self.all_down: set[str] = set()  # groups whose outage was logged
        # False in a worker process: the hub, which probes, says what the groups do
        self.announces = True
        # (member, url) -> when its last scheduled probe ended and the delay: a member of
        # several groups with one probe URL is probed once per interval, not per group
        self.probed: dict[tuple[str, str], tuple[float, int]] = {}
        self.probing: dict[tuple[str, str], trio.Event] = {}


class GroupOutbound:
    def __init__(
        self,
        cfg: GroupConfig,
        outbounds: Mapping[str, object],
        state: GroupState,
        resolver: Resolver | None = None,
        probe: Probe | None = None,
    ) -> None:
        self.tag: str = cfg.tag
        self.kind: str = cfg.TYPE
        self.members: tuple[str, ...] = tuple(cfg.outbounds)
        self.url: str = cfg.url
        self.timeout: float = cfg.timeout.seconds
        self.interval: float = cfg.interval.seconds
        tolerance = cfg.tolerance.seconds if isinstance(cfg, UrltestConfig) else 0.0
        self.tolerance_ms = round(tolerance * 1000)
        self.outbounds = outbounds  # the runtime's, so members may be groups built later
        self.state = state
        self.resolver = resolver
        self._probe = probe

    # -- the choice ---------------------------------------------------------------------

    def view(self) -> GroupView:
        health = self.state.health
        selected = self.state.selections.get(self.tag) if self.kind == "selector" else None
        return GroupView(
            kind=self.kind, members=self.members,
            delays={m: health.last_delay(m) for m in self.members},
            previous=self.state.picks.get(self.tag), selected=selected,
            tolerance_ms=self.tolerance_ms,
        )  # fmt: skip

    def choose(self) -> str | None:
        """The member for a new flow now, or None when all are down; logs a change."""
        view = self.view()
        member = choose(view)
        state = self.state
        if member is None:
            if self.tag not in state.all_down:
                state.all_down.add(self.tag)
                if state.announces:
                    log.warning("group %r (%s) has no healthy member (%s): its flows fail "
                                "until one recovers", self.tag, self.kind,
                                show_delays(self.members, view.delays))  # fmt: skip
            return None
        if self.tag in state.all_down:
            state.all_down.discard(self.tag)
            if state.announces:
                log.info("group %r (%s): %r is healthy again", self.tag, self.kind, member)
        previous = state.picks.get(self.tag)
        if member != previous:
            state.picks[self.tag] = member
            if not state.announces:
                return member
            delays = show_delays(self.members, view.delays)
            if previous is None:
                log.info("group %r (%s) uses %r (%s)", self.tag, self.kind, member, delays)
            else:
                log.info("group %r (%s) now uses %r instead of %r (%s)", self.tag, self.kind,
                         member, previous, delays)  # fmt: skip
        return member

    def current(self) -> str:
        """The member a new flow would use now (when all are down: the one it would use
        first once they recover, as mihomo shows ``now``)."""
        member = self.choose()
        if member is not None:
            return member
        selected = self.view().selected
        return selected if selected in self.members else self.members[0]

    def select(self, member: str) -> None:
        """Selector only: new flows use ``member`` from now on, also after a restart."""
        if self.kind != "selector":
            raise ValueError(f"group {self.tag!r} is a {self.kind}: its member is chosen by "
                             "probes, not by hand")  # fmt: skip
        if member not in self.members:
            raise ValueError(f"{member!r} is not a member of group {self.tag!r}")
        self.state.selections.set(self.tag, member)
        self.choose()

    # -- flows --------------------------------------------------------------------------

    def _member(self) -> tuple[str, object]:
        member = self.choose()
        if member is None:
            raise DialError(errno.EHOSTUNREACH, f"group {self.tag!r}: no healthy member")
        if member not in self.outbounds:  # check rejects this; a guard, not a path
            raise DialError(errno.EINVAL, f"group {self.tag!r}: unknown member {member!r}")
        return member, self.outbounds[member]

    async def open_stream(
        self,
        destination: Destination,
        *,
        timeout: float,  # noqa: ASYNC109
        initial: bytes = b"",
    ) -> Upstream:
        member, outbound = self._member()
        opener = stream_capable(outbound)
        if opener is None:
            raise DialError(errno.EOPNOTSUPP, f"group {self.tag!r}: member {member!r} does "
                            "not carry TCP")  # fmt: skip
        upstream = await opener.open_stream(destination, timeout=timeout, initial=initial)
        upstream.chain = (*upstream.chain, self.tag)
        return upstream

    async def open_udp(self, request: UdpRequest) -> UdpLink:
        member, outbound = self._member()
        opener = datagram_capable(outbound)
        if opener is None:
            raise DialError(errno.EOPNOTSUPP, f"group {self.tag!r}: member {member!r} does "
                            "not carry UDP")  # fmt: skip
        link = await opener.open_udp(request)
        # The access log names the member (auto[ss-hk]): links carry no chain of their
        # own unless a group put one there, so start from the member.
        inner = getattr(link, "chain", None) or (member,)
        with contextlib.suppress(AttributeError):  # a link with __slots__: log the group
            link.chain = (*inner, self.tag)  # type: ignore[attr-defined]
        return link

    # -- probes -------------------------------------------------------------------------

    async def probe_member(self, member: str, *, reuse_within: float = 0.0) -> int:
        """Probe one member now and record it; the delay in ms, 0 when it failed.

        ``reuse_within``: a probe of the same member and URL (by another group) that
        ended less than this many seconds ago, or is running now, answers instead."""
        key, state = (member, self.url), self.state
        if reuse_within:
            running = state.probing.get(key)
            if running is not None:
                await running.wait()
            seen = state.probed.get(key)
            if seen is not None and trio.current_time() - seen[0] < reuse_within:
                await trio.lowlevel.checkpoint()
                return seen[1]
            state.probing[key] = done = trio.Event()
            try:
                delay = await self._probe_now(member)
                state.probed[key] = (trio.current_time(), delay)
            finally:
                del state.probing[key]
                done.set()
            return delay
        return await self._probe_now(member)

    async def _probe_now(self, member: str) -> int:
        outbound = self.outbounds.get(member)
        delay = 0
        with trio.move_on_after(self.timeout):  # probe_delay keeps it; a fake may not
            try:
                if self._probe is not None:
                    delay = await self._probe(outbound, self.url, self.timeout)
                else:
                    delay = await probe_delay(outbound, self.url, self.timeout,
                                              resolver=self.resolver)  # fmt: skip
            except (OSError, TimeoutError) as exc:
                log.debug("group %r: probe through %r failed: %s", self.tag, member, exc)
        self.state.health.record(member, delay)
        return delay

    async def probe_all(self, *, shared: bool = False) -> dict[str, int]:
        """Probe every member now (staggered, concurrently); tag -> delay ms (0 failed).

        ``shared`` (the scheduled rounds): reuse another group's probe of the same
        member and URL from the last half interval."""
        results: dict[str, int] = {}
        gap = min(PROBE_GAP, self.interval / 10 / max(1, len(self.members)))
        reuse = self.interval / 2 if shared else 0.0

        async def one(index: int, member: str) -> None:
            await trio.sleep(index * gap)
            results[member] = await self.probe_member(member, reuse_within=reuse)

        async with trio.open_nursery() as nursery:
            for index, member in enumerate(dict.fromkeys(self.members)):
                nursery.start_soon(one, index, member)
        self.choose()
        return {m: results[m] for m in self.members}

    async def run_prober(self, first: float = 0.0) -> None:
        """Probe every ``interval`` forever, the first round ``first`` seconds from now."""
        await trio.sleep(first)
        while True:
            await self.probe_all(shared=True)
            await trio.sleep(self.interval)


async def probe_groups(outbounds: Mapping[str, object]) -> None:
    """Run every group's prober until cancelled, their first rounds spread out."""
    groups = [ob for ob in outbounds.values() if isinstance(ob, GroupOutbound)]
    if not groups:
        return
    async with trio.open_nursery() as nursery:
        for index, group in enumerate(groups):
            first = min(START_SPREAD, group.interval) * index / len(groups)
            nursery.start_soon(group.run_prober, first)
