"""The rule engine: pure, synchronous; compile once per (re)load, decide per flow.

Wiring::

    geo = GeoData.load(cfg.geodata, base_dir)
    router = compile_router(cfg, geo)            # ConfigErrors on bad entries; drop geo after
    result = router.decide(facts)                # Decision | NeedIps
    if isinstance(result, NeedIps):
        result = router.decide(facts, resolved=await resolve(result.domain))  # () on failure

DNS servers and sniffing exclusions use :func:`build_domain_matcher` (whose
:meth:`DomainMatcher.best` gives the match class for server ordering) and
:func:`build_ip_set`.
"""

from __future__ import annotations

from ..addr import IPAddress
from .compile import build_domain_matcher, build_ip_set, compile_router, geoip_codes
from .domain import DomainIndex, DomainMatch, DomainMatcher
from .engine import Decision, NeedIps, Router, Rule
from .explain import Explanation, explain, render_json, render_text
from .facts import FlowFacts, normalize_domain, parse_target
from .ipset import IpSet

__all__ = [
    "Decision", "DomainIndex", "DomainMatch", "DomainMatcher", "Explanation", "FlowFacts",
    "IPAddress", "IpSet", "NeedIps", "Router", "Rule", "build_domain_matcher", "build_ip_set",
    "compile_router", "explain", "geoip_codes", "normalize_domain", "parse_target", "render_json",
    "render_text",
]  # fmt: skip
