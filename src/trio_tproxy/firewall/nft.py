"""nftables ruleset and policy routing for a `DiversionPlan` — text only, no I/O.

The shape follows the v2ray/Xray TPROXY gateway recipe, in one `inet` table so a
single ruleset covers IPv4 and IPv6:

    prerouting (filter hook, priority mangle)
        proxy's own packets            -> return   (never loop through ourselves)
        fib daddr type local           -> return   (traffic for the gateway itself)
        daddr in @bypass4 / @bypass6   -> return
        socket transparent 1           -> mark, accept   (fast path, see below)
        [iifname in LAN]               -> jump divert
    divert
        tcp / udp  -> tproxy to :PORT, mark, accept
    nat_prerouting (nat hook, priority dstnat), only for `redirect_port`
        the same bypasses, then tcp -> redirect to :PORT

Why each piece:

- `tproxy` only steers the packet to a local socket; it still has to be *routed*
  locally, which is what the fwmark + `ip rule fwmark F lookup T` + `local default dev
  lo table T` trio does.  IPv6 needs its own `ip -6` rule and `local ::/0` route.
- The `socket transparent 1` fast path: once the proxy has accepted a flow, later
  packets match the established transparent socket; marking them routes them locally
  without a second listener lookup (the nftables wiki and v2ray recipe both do this).
- `fib daddr type local` keeps DNS, SSH, ... aimed at the gateway off the proxy, and is
  cheaper than listing every local address in the bypass sets.
- Rendering starts with `table inet T {}` + `delete table inet T`: creating the table
  if it is missing makes the delete always valid, so one `nft -f` replaces the old
  table atomically whether or not it existed.
"""

from __future__ import annotations

from collections.abc import Iterable

from trio_tproxy.firewall.plan import DiversionPlan

# nft's names for the standard hook priorities; anything else is printed as a number.
_PRIORITY_NAMES = {-300: "raw", -150: "mangle", -100: "dstnat", 0: "filter", 100: "srcnat"}

_IP_FAMILIES = (("-4", "0.0.0.0/0"), ("-6", "::/0"))


def render_nft(plan: DiversionPlan) -> str:
    """The complete `nft -f` script: atomic replace of the plan's table."""
    body = [*_render_sets(plan)]
    if plan.tproxy_protocols:
        body.append(_chain("prerouting", _prerouting_rules(plan), hook=_filter_hook(plan)))
        body.append(_chain("divert", _divert_rules(plan)))
    if plan.redirect_port is not None:
        body.append(_chain("nat_prerouting", _nat_rules(plan), hook=_nat_hook(plan)))
    table = f"table inet {plan.table} {{\n" + "\n".join(body) + "}\n"
    return _replace_preamble(plan) + table


def render_nft_removal(plan: DiversionPlan) -> str:
    """An `nft -f` script that removes the table, and succeeds if it is already gone."""
    return _replace_preamble(plan)


def render_ip_rules(plan: DiversionPlan) -> list[list[str]]:
    """`ip` argv lists that route fwmark'ed packets to the local stack.

    `ip route replace` is idempotent; `ip rule add` is not (it stacks duplicates), so
    apply means: run `render_ip_rules_removal` ignoring failures, then these.
    Empty when nothing is TPROXY'd (REDIRECT needs no policy routing).
    """
    if not plan.tproxy_protocols:
        return []
    commands: list[list[str]] = []
    for family, default in _IP_FAMILIES:
        commands.append(["ip", family, "rule", "add", *_rule_selector(plan)])
        # The local route needs `lo` up (it always is, except in a fresh namespace).
        commands.append(["ip", family, "route", "replace", *_local_route(plan, default)])
    return commands


def render_ip_rules_removal(plan: DiversionPlan) -> list[list[str]]:
    """`ip` argv lists undoing `render_ip_rules`; each fails harmlessly if absent."""
    if not plan.tproxy_protocols:
        return []
    commands: list[list[str]] = []
    for family, default in _IP_FAMILIES:
        commands.append(["ip", family, "rule", "del", *_rule_selector(plan)])
        commands.append(["ip", family, "route", "del", *_local_route(plan, default)])
    return commands


def _rule_selector(plan: DiversionPlan) -> list[str]:
    return ["fwmark", str(plan.fwmark), "lookup", str(plan.route_table)]


def _local_route(plan: DiversionPlan, default: str) -> list[str]:
    return ["local", default, "dev", "lo", "table", str(plan.route_table)]


def _replace_preamble(plan: DiversionPlan) -> str:
    return f"table inet {plan.table} {{}}\ndelete table inet {plan.table}\n"


def _render_sets(plan: DiversionPlan) -> list[str]:
    # The sets exist even when empty so rules can always reference them, and so a
    # later `nft add element` (e.g. the resolved address of an upstream) has a home.
    return [
        _interval_set("bypass4", "ipv4_addr", plan.bypass_v4),
        _interval_set("bypass6", "ipv6_addr", plan.bypass_v6),
    ]


def _interval_set(name: str, addr_type: str, cidrs: tuple[str, ...]) -> str:
    lines = [f"\tset {name} {{", f"\t\ttype {addr_type}", "\t\tflags interval", "\t\tauto-merge"]
    if cidrs:
        lines.append("\t\telements = {")
        lines.extend(f"\t\t\t{cidr}," for cidr in cidrs)
        lines.append("\t\t}")
    lines.append("\t}")
    return "\n".join(lines) + "\n"


def _bypass_rules(plan: DiversionPlan) -> list[str]:
    return [
        f"meta mark {plan.proxy_mark} return",
        "fib daddr type local return",
        "ip daddr @bypass4 return",
        "ip6 daddr @bypass6 return",
    ]


def _lan_match(plan: DiversionPlan) -> str:
    """The iifname selector (with trailing space), or "" for any interface."""
    if not plan.lan_interfaces:
        return ""
    names = ", ".join(f'"{name}"' for name in plan.lan_interfaces)
    return f"iifname {{ {names} }} "


def _prerouting_rules(plan: DiversionPlan) -> list[str]:
    mark = plan.fwmark
    protos = ", ".join(plan.tproxy_protocols)
    return [
        *_bypass_rules(plan),
        f"meta l4proto {{ {protos} }} socket transparent 1 meta mark set {mark} accept",
        f"{_lan_match(plan)}jump divert",
    ]


def _divert_rules(plan: DiversionPlan) -> list[str]:
    return [
        f"meta l4proto {proto} tproxy to :{plan.tproxy_port} meta mark set {plan.fwmark} accept"
        for proto in plan.tproxy_protocols
    ]


def _nat_rules(plan: DiversionPlan) -> list[str]:
    return [
        *_bypass_rules(plan),
        f"{_lan_match(plan)}meta l4proto tcp redirect to :{plan.redirect_port}",
    ]


def _filter_hook(plan: DiversionPlan) -> str:
    return f"type filter hook prerouting priority {_priority(plan.priority_mangle)}"


def _nat_hook(plan: DiversionPlan) -> str:
    return f"type nat hook prerouting priority {_priority(plan.priority_nat)}"


def _priority(value: int) -> str:
    return _PRIORITY_NAMES.get(value, str(value))


def _chain(name: str, rules: Iterable[str], *, hook: str | None = None) -> str:
    lines = [f"\tchain {name} {{"]
    if hook is not None:
        lines.append(f"\t\t{hook}; policy accept;")
    lines.extend(f"\t\t{rule}" for rule in rules)
    lines.append("\t}")
    return "\n".join(lines) + "\n"
