"""Everything flows share, built from one config; swapped as a whole on reload."""

from __future__ import annotations

import attrs

from .cache import RouterCache
from .config import Config, Inbound
from .dns.service import DnsService
from .geo import GeoData
from .limits import UdpLimits, pipe_budget
from .outbound import REGISTRY, FlowContext, Outbound, build_outbounds
from .outbound.dns import DnsOutbound
from .relay import BufferPool, RelayTimeouts
from .resolver import LateResolver, Resolver
from .route import (
    Decision,
    DomainMatcher,
    FlowFacts,
    NeedIps,
    Router,
    build_domain_matcher,
    compile_router,
)
from .sniff import Sniffed
from .splice import PipePool
from .tracking import FlowTracker


def not_yet_in_effect(cfg: Config) -> list[str]:
    """Settings this version accepts (SPEC) but does not act on yet: said at every
    start and reload, so nothing a user configured is ignored silently."""
    unheeded = []
    if cfg.process.workers != 1:
        unheeded.append(f"process.workers = {cfg.process.workers!r}: one process serves all")
    for i, ob in enumerate(cfg.outbounds):
        if type(ob) not in REGISTRY:
            unheeded.append(f"outbounds[{i}] {ob.tag!r}: type {ob.TYPE!r} is not implemented "
                            "yet; flows routed to it are refused")  # fmt: skip
    for key in ("geosite_dat", "geoip_dat"):
        if getattr(cfg.geodata, key):
            unheeded.append(f"geodata.{key} is not read yet: rules_dir and geoip are used")
    return unheeded


@attrs.frozen
class Runtime:
    config: Config
    router: Router
    outbounds: dict[str, Outbound]
    resolver: Resolver
    flow_context: FlowContext
    own_ports: frozenset[int]
    sniff_excluded: dict[str, DomainMatcher]  # by inbound tag
    dns: DnsService  # the splitter: also `resolver`, the dns outbound's and dns.listen's
    udp_limits: UdpLimits  # the UDP session table's (policy.udp_idle, max_udp_sessions, ...)
    router_cache: RouterCache | None = None  # compiled rules kept on disk (trio_tproxy/cache.py)
    tracker: FlowTracker = attrs.field(factory=FlowTracker)  # open flows (the API): kept on reload

    @classmethod
    def build(
        cls,
        cfg: Config,
        pipes: PipePool | None = None,
        router_cache: RouterCache | None = None,
        tracker: FlowTracker | None = None,
    ) -> Runtime:
        """Compile routing and outbounds; raises ConfigErrors (lists, geodata) with paths.

        ``pipes``: the splice pipe pool to keep (a reload passes the running one);
        ``router_cache``: where compiled rules are kept between runs (None: nowhere);
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
        outbounds = build_outbounds(cfg, late)
        # The built-in DNS resolves for everything (routing, outbounds, the dns outbound
        # and listener); with no dns.servers it asks the system resolver, as v2ray does.
        dns = DnsService(cfg, geo, router, outbounds)
        for outbound in outbounds.values():
            if isinstance(outbound, DnsOutbound):
                outbound.attach(dns)
        resolver: Resolver = dns
        late.target = dns
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
            resolver=resolver,  # outbounds resolve through the same resolver as routing
        )
        own_ports = frozenset(ib.port for ib in cfg.inbounds) | {a.port for a in cfg.dns.listen}
        return cls(
            config=cfg,
            router=router,
            outbounds=outbounds,
            resolver=resolver,
            flow_context=ctx,
            own_ports=frozenset(own_ports),
            sniff_excluded=excluded,
            dns=dns,
            udp_limits=UdpLimits.from_policy(policy),
            router_cache=router_cache,
            tracker=tracker if tracker is not None else FlowTracker(),
        )

    async def decide(self, facts: FlowFacts) -> Decision:
        """The routing decision for a flow, resolving its domain when a rule needs it."""
        outcome = self.router.decide(facts)
        if isinstance(outcome, NeedIps):
            assert facts.domain is not None
            outcome = self.router.decide(facts, await self.resolver.resolve(facts.domain))
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
