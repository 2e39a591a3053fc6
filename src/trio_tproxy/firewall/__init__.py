"""Firewall: ruleset and policy-routing generation (pure) for diverting traffic.

`plan_from_config` turns the configuration into a `DiversionPlan`; `render_nft`,
`render_iptables` and `render_script` turn a plan into text.  None of it does I/O;
`trio_tproxy.firewall.apply` (imported explicitly) runs nft and ip.
"""

from __future__ import annotations

from trio_tproxy.firewall.from_config import plan_from_config, proxy_marks, resolve_ip_entries
from trio_tproxy.firewall.iptables import render_iptables, render_iptables_removal
from trio_tproxy.firewall.nft import (
    render_ip_rules,
    render_ip_rules_removal,
    render_nft,
    render_nft_removal,
)
from trio_tproxy.firewall.plan import RESERVED_V4, RESERVED_V6, DiversionPlan
from trio_tproxy.firewall.script import render_script

__all__ = [
    "RESERVED_V4",
    "RESERVED_V6",
    "DiversionPlan",
    "plan_from_config",
    "proxy_marks",
    "render_ip_rules",
    "render_ip_rules_removal",
    "render_iptables",
    "render_iptables_removal",
    "render_nft",
    "render_nft_removal",
    "render_script",
    "resolve_ip_entries",
]
