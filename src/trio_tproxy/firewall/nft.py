"""nftables ruleset and policy routing for a `DiversionPlan` -- text only, no I/O.

The shape follows the v2ray/Xray TPROXY gateway recipe, in one `inet` table so a
single ruleset covers IPv4 and IPv6 (docs/firewall.md explains every line):

    prerouting (filter hook, priority mangle)
        proxy's own packets                 -> return   (never loop through ourselves)
        fib daddr type local/bcast/mcast    -> return   (the gateway itself: SSH, DNS)
        daddr in @bypass4 / @bypass6        -> return
        socket transparent 1                -> mark, accept   (fast path, see below)
        [local mode] iifname lo + fwmark    -> jump divert    (the gateway's own traffic)
        [iifname in LAN]                    -> jump divert
    divert
        tcp / udp -> tproxy to :PORT, mark, accept
        [fail_closed] tcp / udp -> drop     (no listener claimed the packet)
    output (route hook, local mode only)
        proxy's marks, skip_users, local, bypass, replies -> return
        tcp / udp -> mark fwmark            (rerouted through lo into prerouting)
    nat_prerouting / nat_output (nat hooks, only for `redirect_port`)
        the same bypasses, then tcp -> redirect to :PORT

Why each piece:

- `tproxy` only steers the packet to a local socket; it still has to be *routed*
  locally, which is what the fwmark + `ip rule fwmark F lookup T` + `local default dev
  lo table T` trio does.  IPv6 needs its own `ip -6` rule and `local ::/0` route.
- The `socket transparent 1` fast path: once the proxy has accepted a flow, later
  packets match the established transparent socket; marking them routes them locally
  without a second listener lookup (the nftables wiki and v2ray recipe both do this).
- `fib daddr type local` keeps DNS, SSH, ... aimed at the gateway off the proxy, and is
  cheaper than listing every local address in the bypass sets; broadcast and
  multicast (DHCP, mDNS, SSDP) can never be proxied either.
- nft's `tproxy` finds no listener -> the rule does not match and evaluation goes on
  (the packet would be forwarded unproxied); the fail-closed `drop` right after the
  tproxy rules is reached exactly then.
- `ct direction reply` in output: packets answering a connection someone else opened
  (the proxy's transparent sockets answering LAN clients, the gateway's SSH server)
  must go back where they came from, never into the proxy.
- Rendering starts with `table inet T {}` + `delete table inet T`: creating the table
  if it is missing makes the delete always valid, so one `nft -f` replaces the old
  table atomically whether or not it existed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from trio_tproxy.firewall.plan import DiversionPlan

# nft's names for the standard hook priorities; anything else is printed as a number.
_PRIORITY_NAMES = {-300: "raw", -150: "mangle", -100: "dstnat", 0: "filter", 50: "security",
                   100: "srcnat"}  # fmt: skip
# nft accepts dstnat in prerouting only and srcnat in postrouting only (nft(8), "CHAINS"):
# elsewhere such a value is written as its number
_HOOK_ONLY = {"dstnat": "prerouting", "srcnat": "postrouting"}

_DEFAULT_ROUTES = {4: "0.0.0.0/0", 6: "::/0"}


def render_nft(plan: DiversionPlan) -> str:
    """The complete `nft -f` script: atomic replace of the plan's table."""
    body = [*_render_sets(plan)]
    if plan.tproxy_protocols:
        body.append(_chain("prerouting", _prerouting_rules(plan), hook=_mangle_hook(plan)))
        body.append(_chain("divert", _divert_rules(plan)))
        if plan.local:
            body.append(_chain("output", _output_rules(plan), hook=_route_hook(plan)))
    if plan.redirect_port is not None:
        nat_hook = _nat_hook(plan, "prerouting")
        body.append(_chain("nat_prerouting", _nat_rules(plan), hook=nat_hook))
        if plan.local:
            nat_hook = _nat_hook(plan, "output")
            body.append(_chain("nat_output", _nat_output_rules(plan), hook=nat_hook))
    table = f"table inet {plan.table} {{\n" + "\n".join(body) + "}\n"
    return _replace_preamble(plan) + table


def render_nft_removal(plan: DiversionPlan) -> str:
    """An `nft -f` script that removes the table, and succeeds if it is already gone."""
    return _replace_preamble(plan)


def render_ip_rules(plan: DiversionPlan) -> list[list[str]]:
    """`ip` argv lists that route fwmark'ed packets to the local stack.

    `ip route replace` is idempotent; `ip rule add` is not (it stacks duplicates), so
    apply means: delete every rule `render_ip_rules_removal` names, then these.
    Empty when nothing is TPROXY'd (REDIRECT needs no policy routing).
    """
    if not plan.tproxy_protocols:
        return []
    commands: list[list[str]] = []
    for family in plan.families:
        commands.append(["ip", f"-{family}", "rule", "add", *rule_selector(plan)])
        # The local route needs `lo` up (it always is, except in a fresh namespace).
        commands.append(["ip", f"-{family}", "route", "replace", *local_route(plan, family)])
    return commands


def render_ip_rules_removal(plan: DiversionPlan) -> list[list[str]]:
    """`ip` argv lists undoing `render_ip_rules`; each fails harmlessly if absent."""
    if not plan.tproxy_protocols:
        return []
    commands: list[list[str]] = []
    for family in plan.families:
        commands.append(["ip", f"-{family}", "rule", "del", *rule_selector(plan)])
        commands.append(["ip", f"-{family}", "route", "del", *local_route(plan, family)])
    return commands


def rule_selector(plan: DiversionPlan) -> list[str]:
    """What identifies our `ip rule` (the fwmark and the table are ours)."""
    return ["fwmark", str(plan.fwmark), "lookup", str(plan.route_table)]


def local_route(plan: DiversionPlan, family: int) -> list[str]:
    return ["local", _DEFAULT_ROUTES[family], "dev", "lo", "table", str(plan.route_table)]


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


def _one_or_set(values: Iterable[str]) -> str:
    items = list(values)
    return items[0] if len(items) == 1 else "{ " + ", ".join(items) + " }"


def _skip_rules(plan: DiversionPlan, *, output: bool) -> list[str]:
    rules = []
    if plan.proxy_marks:
        rules.append(f"meta mark {_one_or_set(str(m) for m in plan.proxy_marks)} return")
    if output and plan.skip_users:
        # nft resolves names when it loads the script; uids are taken as they are.
        users = (u if u.isdigit() else f'"{u}"' for u in plan.skip_users)
        rules.append(f"meta skuid {_one_or_set(users)} return")
    rules += [
        "fib daddr type { local, broadcast, multicast } return",
        "ip daddr @bypass4 return",
        "ip6 daddr @bypass6 return",
    ]
    return rules


def _lan_match(plan: DiversionPlan) -> str:
    """The iifname selector (with trailing space), or "" for any interface."""
    if not plan.lan_interfaces:
        return ""
    names = _one_or_set('"' + name + '"' for name in plan.lan_interfaces)
    return f"iifname {names} "


def _family_match(plan: DiversionPlan) -> str:
    return "" if plan.ipv6 else "meta nfproto ipv4 "


def _protocols(plan: DiversionPlan) -> str:
    return "{ " + ", ".join(plan.tproxy_protocols) + " }"


def _prerouting_rules(plan: DiversionPlan) -> list[str]:
    mark = plan.fwmark
    rules = [
        *_skip_rules(plan, output=False),
        f"meta l4proto {_protocols(plan)} socket transparent 1 meta mark set {mark} accept",
    ]
    if plan.local and plan.lan_interfaces:
        # The gateway's own packets, marked by the output chain and turned around
        # through lo by the policy routing.  (With no lan_interfaces, the next rule
        # already takes every interface, lo included.)
        rules.append(f'iifname "lo" meta mark {mark} {_family_match(plan)}jump divert')
    rules.append(f"{_lan_match(plan)}{_family_match(plan)}jump divert")
    return rules


def _tproxy_to(plan: DiversionPlan, protocol: str) -> str:
    port, address = plan.tproxy_target(protocol)
    if address is None:
        return f"tproxy to :{port}"
    if ipaddress.ip_address(address).version == 4:
        return f"tproxy ip to {address}:{port}"
    return f"tproxy ip6 to [{address}]:{port}"


def _divert_rules(plan: DiversionPlan) -> list[str]:
    rules = [
        f"meta l4proto {proto} {_tproxy_to(plan, proto)} meta mark set {plan.fwmark} accept"
        for proto in plan.tproxy_protocols
    ]
    if plan.fail_closed:
        rules.append(f"meta l4proto {_protocols(plan)} drop")
    return rules


def _output_rules(plan: DiversionPlan) -> list[str]:
    return [
        *_skip_rules(plan, output=True),
        "ct direction reply return",
        f"meta l4proto {_protocols(plan)} {_family_match(plan)}meta mark set {plan.fwmark}",
    ]


def _nat_rules(plan: DiversionPlan) -> list[str]:
    where = f"{_lan_match(plan)}{_family_match(plan)}"
    return [
        *_skip_rules(plan, output=False),
        f"{where}meta l4proto tcp redirect to :{plan.redirect_port}",
    ]


def _nat_output_rules(plan: DiversionPlan) -> list[str]:
    return [
        *_skip_rules(plan, output=True),
        f"{_family_match(plan)}meta l4proto tcp redirect to :{plan.redirect_port}",
    ]


def _mangle_hook(plan: DiversionPlan) -> str:
    return f"type filter hook prerouting priority {_priority(plan.priority_mangle, 'prerouting')}"


def _route_hook(plan: DiversionPlan) -> str:
    return f"type route hook output priority {_priority(plan.priority_mangle, 'output')}"


def _nat_hook(plan: DiversionPlan, hook: str) -> str:
    # nft 1.0 accepts the name "dstnat" in prerouting only; output takes the number.
    return f"type nat hook {hook} priority {_priority(plan.priority_nat, hook)}"


def _priority(value: int, hook: str) -> str:
    """The standard name of ``value`` where ``hook`` accepts it, else the number."""
    name = _PRIORITY_NAMES.get(value)
    if name is None or _HOOK_ONLY.get(name, hook) != hook:
        return str(value)
    return name


def _chain(name: str, rules: Iterable[str], *, hook: str | None = None) -> str:
    lines = [f"\tchain {name} {{"]
    if hook is not None:
        lines.append(f"\t\t{hook}; policy accept;")
    lines.extend(f"\t\t{rule}" for rule in rules)
    lines.append("\t}")
    return "\n".join(lines) + "\n"
