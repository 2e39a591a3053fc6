"""Everything flows share, built from one config; swapped as a whole on reload."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
import threading
from collections.abc import Iterator

import attrs

from .config import GROUP_TYPES, Config, Inbound
from .dns.message import load_dnslib
from .dns.service import DnsService
from .geo import GeoData
from .limits import UdpLimits, pipe_budget
from .outbound import REGISTRY, FlowContext, GroupState, StreamOutbound, build_outbounds
from .outbound.dns import DnsOutbound
from .outbound.health import HealthBook
from .relay import BufferPool, RelayTimeouts
from .resolver import LateResolver
from .route import (
    Decision,
    DomainMatcher,
    FlowFacts,
    NeedIps,
    Router,
    build_domain_matcher,
    compile_router,
)
from .router_cache import RouterCache
from .sniff import Sniffed
from .sniff.quic_initial import load_ciphers
from .splice import PipePool
from .tracking import FlowTracker


def not_yet_in_effect(cfg: Config) -> list[str]:
    """Settings this version accepts (SPEC) but does not act on yet: said at every
    start and reload, so nothing a user configured is ignored silently."""
    unheeded = []
    for i, ob in enumerate(cfg.outbounds):
        if type(ob) not in REGISTRY and not isinstance(ob, GROUP_TYPES):
            unheeded.append(f"outbounds[{i}] {ob.tag!r}: type {ob.TYPE!r} is not implemented "
                            "yet; flows routed to it are refused")  # fmt: skip
    return unheeded


# A reload builds the next runtime in a worker thread while the event loop relays (the
# build is pure: config, lists, geodata, no trio). Through the GIL the build can still
# stall the loop: a full collection during it (~120,000 new objects with conf/main.toml's
# lists) holds the GIL ~50 ms, and under the default 5 ms switch interval the build
# thread keeps the GIL 5 ms at a time. Measured with tests/e2e/test_reload.py (a byte
# every 10 ms, three uncached reloads of the big lists, 2 loaded cores): 213 ms worst
# round trip building on the loop; 40-140 ms in a thread with the collector paused and a
# 1 ms interval; 5-80 ms once the new runtime also skips the young generations (below).
BUILD_SWITCH_INTERVAL = 0.001


# A build runs at this nice value (the thread only, Linux): with worker processes, the
# other processes that relay meanwhile keep the cores they need.
BUILD_NICENESS = 10


@contextlib.contextmanager
def lowered_priority() -> Iterator[None]:
    """This thread at ``BUILD_NICENESS`` while the block runs; back after it when the
    process may raise priorities again (root; otherwise the thread stays lowered)."""
    tid = threading.get_native_id()
    try:
        before = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, max(before, BUILD_NICENESS))
    except OSError:
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, before)


@contextlib.contextmanager
def quiet_build() -> Iterator[None]:
    """Pause the cyclic collector and shorten the GIL switch interval (both process-wide)
    for the duration of an off-loop build; both are restored however it ends."""
    enabled = gc.isenabled()
    interval = sys.getswitchinterval()
    gc.disable()
    sys.setswitchinterval(min(interval, BUILD_SWITCH_INTERVAL))
    try:
        with lowered_priority():
            yield
    finally:
        # What the build made (the new runtime) goes straight to the oldest generation:
        # freeze() parks every tracked object, unfreeze() hands them to generation 2, no
        # traversal either way. Left young, the first collections after the swap would
        # traverse them all again (measured: 20-60 ms of GIL per pass under load).
        gc.freeze()
        gc.unfreeze()
        sys.setswitchinterval(interval)
        if enabled:
            gc.enable()


def _load_what_flows_need(cfg: Config, dns: DnsService) -> None:
    """With worker processes (forked once this runtime is built), import now what their
    first flows will: the QUIC sniffer's ciphers (sniffing on a UDP inbound: clients
    speak QUIC) and dnslib (DNS servers: every answer is parsed). Imported before the
    fork, the workers share one copy instead of each importing its own. One process
    imports them when first needed, so a config that never needs them does not pay
    (~6.6 MB for cryptography, ~0.6 MB for dnslib)."""
    if cfg.process.workers == 1:
        return
    if any("udp" in ib.network and ib.sniffing.enabled for ib in cfg.inbounds):
        load_ciphers()
    if not dns.uses_system_resolver:
        load_dnslib()


@attrs.frozen
class Runtime:
    config: Config
    router: Router
    outbounds: dict[str, StreamOutbound]
    flow_context: FlowContext
    own_ports: frozenset[int]
    sniff_excluded: dict[str, DomainMatcher]  # by inbound tag
    # The splitter: the resolver of routing and of the outbounds (through a LateResolver),
    # the dns outbound's and dns.listen's answers.
    dns: DnsService
    udp_limits: UdpLimits  # the UDP session table's (policy.udp_idle, max_udp_sessions, ...)
    router_cache: RouterCache | None = None  # compiled rules kept on disk (router_cache.py)
    # Group probe history and choices: a reload passes the running one on.
    groups: GroupState = attrs.field(factory=GroupState)

    @property
    def health(self) -> HealthBook:
        return self.groups.health
    tracker: FlowTracker = attrs.field(factory=FlowTracker)  # open flows (the API): kept on reload

    @classmethod
    def build(
        cls,
        cfg: Config,
        pipes: PipePool | None = None,
        router_cache: RouterCache | None = None,
        groups: GroupState | None = None,
        tracker: FlowTracker | None = None,
    ) -> Runtime:
        """Compile routing and outbounds; raises ConfigErrors (lists, geodata) with paths.

        ``pipes``: the splice pipe pool to keep (a reload passes the running one);
        ``router_cache``: where compiled rules are kept between runs (None: nowhere);
        ``groups``: group state to keep (a reload passes the running one; default: fresh,
        with selector choices read from the state directory).
        ``tracker``: the open flows to keep (a reload passes the running one)."""
        geo = GeoData.load(cfg.geodata)
        router = compile_router(cfg, geo, cache=router_cache)
        excluded: dict[str, DomainMatcher] = {
            ib.tag: build_domain_matcher(
                ib.sniffing.exclude_domains, geo, f"$.inbounds[{i}].sniffing.exclude_domains"
            )
            for i, ib in enumerate(cfg.inbounds)
        }
        policy = cfg.policy
        late = LateResolver()  # the outbounds resolve through the DNS built after them
        late_direct = LateResolver()  # ... and proxies find their servers without proxies
        groups = groups or GroupState()
        outbounds = build_outbounds(cfg, late, groups, server_resolver=late_direct)
        # The built-in DNS resolves for everything (routing, outbounds, the dns outbound
        # and listener); with no dns.servers it asks the system resolver, as v2ray does.
        dns = DnsService(cfg, geo, router, outbounds)
        for outbound in outbounds.values():
            if isinstance(outbound, DnsOutbound):
                outbound.attach(dns)
        late.target = dns
        late_direct.target = dns.direct
        ctx = FlowContext(
            pool=BufferPool(
                policy.buffer_size,
                pipes=pipes or PipePool(pipe_budget(policy.max_connections)),
            ),
            timeouts=RelayTimeouts(
                idle=policy.conn_idle.seconds,
                uplink_only=policy.uplink_only.seconds,
                downlink_only=policy.downlink_only.seconds,
            ),
            handshake_timeout=policy.handshake.seconds,
        )
        own_ports = frozenset(ib.port for ib in cfg.inbounds) | {a.port for a in cfg.dns.listen}
        _load_what_flows_need(cfg, dns)
        return cls(
            config=cfg,
            router=router,
            outbounds=outbounds,
            flow_context=ctx,
            own_ports=frozenset(own_ports),
            sniff_excluded=excluded,
            dns=dns,
            udp_limits=UdpLimits.from_policy(policy),
            router_cache=router_cache,
            groups=groups,
            tracker=tracker if tracker is not None else FlowTracker(),
        )

    async def decide(self, facts: FlowFacts) -> Decision:
        """The routing decision for a flow, resolving its domain when a rule needs it."""
        outcome = self.router.decide(facts)
        if isinstance(outcome, NeedIps):
            assert facts.domain is not None
            outcome = self.router.decide(facts, await self.dns.resolve(facts.domain))
        assert not isinstance(outcome, NeedIps)
        return outcome

    def sniff_override(self, inbound: Inbound, sniffed: Sniffed) -> str | None:
        """The domain that replaces the destination, per ``dest_override`` (reference §2).

        Only a valid host name overrides (the sniffers normalise or drop it); the
        protocol must be one of dest_override by prefix or suffix ("http" ~ "http1");
        ``exclude_domains`` wins over everything.
        """
        domain = sniffed.domain
        if domain is None:
            return None
        proto = sniffed.protocol
        wanted = inbound.sniffing.dest_override
        if not any(proto.startswith(p) or proto.endswith(p) for p in wanted):
            return None
        if self.sniff_excluded[inbound.tag].matches(domain):
            return None
        return domain
