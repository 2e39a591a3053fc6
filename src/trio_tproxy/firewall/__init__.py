"""Firewall: ruleset and policy-routing generation (pure) for diverting traffic."""

from __future__ import annotations

from trio_tproxy.firewall.nft import (
    render_ip_rules,
    render_ip_rules_removal,
    render_nft,
    render_nft_removal,
)
from trio_tproxy.firewall.plan import RESERVED_V4, RESERVED_V6, DiversionPlan

__all__ = [
    "RESERVED_V4",
    "RESERVED_V6",
    "DiversionPlan",
    "render_ip_rules",
    "render_ip_rules_removal",
    "render_nft",
    "render_nft_removal",
]
