"""`trio-tproxy firewall print`: the whole diversion as one shell script -- text only.

The script does what `firewall apply` does and can be run as it is (`sh -e`), or read
and adapted by hand.  Running it twice is the same as once: it first removes what an
earlier run added (ip rules by fwmark and table, iptables chains by name; the nft table
is replaced atomically anyway).  It ends with the commands that remove it all.
"""

from __future__ import annotations

import shlex

from trio_tproxy.firewall.iptables import render_iptables, render_iptables_removal
from trio_tproxy.firewall.nft import (
    local_route,
    render_ip_rules,
    render_nft,
    rule_selector,
)
from trio_tproxy.firewall.plan import DiversionPlan

# A heredoc delimiter that cannot occur in a generated ruleset.
_EOF = "TRIO_TPROXY_NFT"


def render_script(plan: DiversionPlan, *, iptables: bool = False, source: str = "") -> str:
    """A shell script installing ``plan`` with nft (default) or iptables/ip6tables."""
    what = "iptables/ip6tables" if iptables else "nftables"
    lines = [
        f"# trio-tproxy firewall ({what}){' for ' + source if source else ''}.",
        "# `trio-tproxy firewall apply` does the same; docs/firewall.md explains every line.",
        "set -e",
    ]
    if iptables:
        lines += [
            "# iptables' TPROXY target drops a packet no listener claims: these rules are",
            "# fail-closed whatever firewall.fail_closed says.",
            "# Undo an earlier run of this script (nothing to undo is fine):",
            *(_quiet(argv) for argv in render_iptables_removal(plan)),
        ]
    lines += _routing(plan)
    if iptables:
        lines.append("# Divert:")
        lines += [shlex.join(argv) for argv in render_iptables(plan)]
    else:
        lines += [
            f"# Divert: one atomic transaction that replaces table inet {plan.table}.",
            f"nft -f - <<'{_EOF}'",
            render_nft(plan).rstrip("\n"),
            _EOF,
        ]
    lines += ["# To remove all of it:", *(f"#   {cmd}" for cmd in _removal(plan, iptables))]
    return "\n".join(lines) + "\n"


def _quiet(argv: list[str]) -> str:
    return f"{shlex.join(argv)} 2>/dev/null || true"


def _routing(plan: DiversionPlan) -> list[str]:
    if not plan.tproxy_protocols:
        return []
    lines = [
        f"# Policy routing: packets marked {plan.fwmark} are delivered locally "
        f"(table {plan.route_table}).",
    ]
    for family in plan.families:
        delete = shlex.join(["ip", f"-{family}", "rule", "del", *rule_selector(plan)])
        lines.append(f"while {delete} 2>/dev/null; do :; done")
    lines += [shlex.join(argv) for argv in render_ip_rules(plan)]
    return lines


def _removal(plan: DiversionPlan, iptables: bool) -> list[str]:
    if iptables:
        commands = [_quiet(argv) for argv in render_iptables_removal(plan)]
    else:
        commands = [f"nft delete table inet {plan.table}"]
    for family in plan.families if plan.tproxy_protocols else ():
        commands.append(shlex.join(["ip", f"-{family}", "rule", "del", *rule_selector(plan)]))
        commands.append(
            shlex.join(["ip", f"-{family}", "route", "del", *local_route(plan, family)])
        )
    return commands
