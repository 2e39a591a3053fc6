"""Everything flows share, built from one config; swapped as a whole on reload."""

from __future__ import annotations

import attrs

from .config import Config, Inbound
from .geo import GeoData
from .outbound import FlowContext, Outbound, build_outbounds
from .relay import BufferPool, RelayTimeouts
from .resolver import Resolver, SystemResolver
from .route import DomainMatcher, Router, build_domain_matcher, compile_router
from .sniff import Sniffed


@attrs.frozen
class Runtime:
    config: Config
    router: Router
    outbounds: dict[str, Outbound]
    resolver: Resolver
    flow_context: FlowContext
    own_ports: frozenset[int]
    sniff_excluded: dict[str, DomainMatcher]  # by inbound tag

    @classmethod
    def build(cls, cfg: Config) -> Runtime:
        """Compile routing and outbounds; raises ConfigErrors (lists, geodata) with paths."""
        geo = GeoData.load(cfg.geodata)
        router = compile_router(cfg, geo)
        excluded: dict[str, DomainMatcher] = {
            ib.tag: build_domain_matcher(
                ib.sniffing.exclude_domains, geo, f"$.inbounds[{i}].sniffing.exclude_domains"
            )
            for i, ib in enumerate(cfg.inbounds)
        }
        policy = cfg.policy
        ctx = FlowContext(
            pool=BufferPool(policy.buffer_size),
            timeouts=RelayTimeouts(
                idle=policy.conn_idle.seconds,
                uplink_only=policy.uplink_only.seconds,
                downlink_only=policy.downlink_only.seconds,
            ),
            handshake_timeout=policy.handshake.seconds,
        )
        own_ports = frozenset(ib.port for ib in cfg.inbounds) | {a.port for a in cfg.dns.listen}
        return cls(
            config=cfg,
            router=router,
            outbounds=build_outbounds(cfg),
            resolver=SystemResolver(),
            flow_context=ctx,
            own_ports=frozenset(own_ports),
            sniff_excluded=excluded,
        )

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
