"""v2ray v4 / Xray ``routing`` and ``dns`` -> ``[routing]`` and ``[dns]``.

Rules are converted one to one and in order (first match wins in both). A rule keeps
every condition or is dropped whole and reported: losing one condition of an AND would
make the rule match more than it did. What v2ray itself ignores is dropped and
reported too: a rule naming only inbounds that do not exist, and a rule on ``user`` or
``attrs`` (never filled for dokodemo-door flows, so such a rule never matched).
Balancers become ``urltest`` groups of the outbounds their selector prefixes pick.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config.errors import BadValue
from ..config.values import PortRanges, check_domain_entry, check_ip_entry
from .draft import entry_value, host_port, is_ip, normalise_cidr, unique_tag
from .report import Node
from .toml_out import Table
from .v2ray_context import V2rayContext, networks
from .v2ray_inbounds import FORWARDER_WHY

__all__ = ["convert_routing", "domain_entry", "ip_entry"]

_ROUTING_STRATEGIES = {"asis": "as_is", "ipifnonmatch": "ip_if_non_match",
                       "ipondemand": "ip_on_demand"}  # fmt: skip
_PROTOCOLS = {"http": "http", "tls": "tls", "quic": "quic", "bittorrent": "bittorrent",
              "dns": "dns"}  # fmt: skip
_EXT_PREFIXES = ("ext:", "ext-domain:", "ext-ip:")


class RuleDropped(Exception):
    def __init__(self, path: str, why: str) -> None:
        super().__init__(why)
        self.path = path
        self.why = why


def domain_entry(entry: str) -> str:
    """A v2ray domain entry in our syntax (the same but for ``ext-domain:``); raises
    BadValue when it cannot be written."""
    lowered = entry.lower()
    if lowered.startswith("ext-domain:"):
        return "ext:" + entry[len("ext-domain:") :]
    if lowered.startswith("ext:"):
        return entry  # v2ray's asset-directory lists: kept verbatim for [geodata]
    return check_domain_entry(entry)


def ip_entry(entry: str) -> str:
    lowered = entry.lower()
    if lowered.startswith(_EXT_PREFIXES):
        return entry
    if lowered.startswith("geoip:"):
        return check_ip_entry(entry)
    cidr = normalise_cidr(entry)
    if cidr is None:
        raise BadValue(f"{entry!r} is not an IP, CIDR or geoip: entry")
    return cidr


def convert_routing(ctx: V2rayContext, routing: Node | None) -> None:
    _dns_listeners(ctx, routing)
    if routing is None:
        return
    strategy = routing.text("domainStrategy")
    if strategy:
        ours = _ROUTING_STRATEGIES.get(strategy.lower())
        if ours is None:
            ctx.report.omit(routing.at("domainStrategy"), f"unknown {strategy!r}; as_is used")
        else:
            ctx.draft.routing.set("domain_strategy", ours)
    routing.ignore("domainMatcher")  # linear / mph: how, not what, is matched
    balancers = _balancers(ctx, routing)
    for node in routing.nodes("rules"):
        try:
            table = _rule(ctx, node, balancers)
        except RuleDropped as exc:
            ctx.report.omit(exc.path, f"{exc.why}; rule dropped")
            continue
        ctx.draft.rules.append(table)
        node.leftovers()
    routing.leftovers()


def _dns_listeners(ctx: V2rayContext, routing: Node | None) -> None:
    """A dokodemo-door forwarder whose first rule sends it to a dns outbound is what a
    DNS listener is here (``dns.listen``); the others have no equivalent."""
    rules = routing.raw.get("rules") if routing is not None else None
    first: dict[str, object] = {}
    for rule in rules if isinstance(rules, list) else []:
        tags = rule.get("inboundTag") if isinstance(rule, dict) else None
        for tag in [tags] if isinstance(tags, str) else tags if isinstance(tags, list) else []:
            if isinstance(tag, str):
                first.setdefault(tag, rule.get("outboundTag"))
    listens = []
    for tag, (path, listen, port) in ctx.forwarders.items():
        target = first.get(tag)
        ours = ctx.outbound_tags.get(target) if isinstance(target, str) else None
        address = host_port(listen if is_ip(listen) else "0.0.0.0", port)
        if ours not in ctx.dns_outbounds or not 1 <= port <= 65535:
            ctx.report.omit(path, FORWARDER_WHY)
            continue
        ctx.dns_listeners.add(tag)
        listens.append(address)
        ctx.report.omit(path, f"dokodemo-door routed to the dns outbound {ours!r}: written as "
                        f"dns.listen {address!r} (answered by the built-in DNS)")  # fmt: skip
    if listens:
        ctx.draft.dns.set("listen", listens)


def _balancers(ctx: V2rayContext, routing: Node) -> dict[str, str]:
    """Balancer tag -> the tag of the urltest group written for it."""
    groups: dict[str, str] = {}
    for node in routing.nodes("balancers"):
        tag = node.text("tag") or ""
        prefixes = node.texts("selector")
        members = [ours for theirs, ours in ctx.outbound_tags.items()
                   if theirs and any(theirs.startswith(p) for p in prefixes)]  # fmt: skip
        if not tag or not members:
            ctx.report.omit(node.path, "a balancer needs a tag and a selector that picks "
                            "outbounds; not converted")  # fmt: skip
            node.ignore(*node.raw)
            continue
        strategy = node.node("strategy")
        kind = (strategy.text("type") if strategy else None) or "random"
        if strategy is not None:
            strategy.ignore(*strategy.raw)
        ours = unique_tag(tag, ctx.taken_tags)
        table = Table(None)
        table.note(f"{node.path}: balancer (strategy {kind})")
        for key, item in (("tag", ours), ("type", "urltest"), ("outbounds", members)):
            table.set(key, item)
        ctx.draft.outbounds.append(table)
        groups[tag] = ours
        why = "" if kind.lower() == "leastping" else f"strategy {kind!r} approximated: "
        ctx.report.omit(node.path, f"{why}balancer written as urltest group {ours!r} "
                        "(lowest probe delay among the selected outbounds)")  # fmt: skip
        fallback = node.text("fallbackTag")
        if fallback:
            ctx.report.omit(node.at("fallbackTag"), "no equivalent: a urltest group keeps "
                            "its best member")  # fmt: skip
        node.leftovers()
    return groups


def _rule(ctx: V2rayContext, node: Node, balancers: dict[str, str]) -> Table:
    kind = node.text("type") or "field"
    if kind != "field":
        raise RuleDropped(node.at("type"), f"rule type {kind!r}: only 'field' rules exist")
    for never in ("user", "attrs"):
        if node.take(never) is not None:
            raise RuleDropped(node.at(never), f"{never!r} is never set on dokodemo-door "
                              "flows, so this rule never matched")  # fmt: skip
    for key in ("ip", "source", "sourceIP"):
        given = node.raw.get(key)
        entries = [given] if isinstance(given, str) else given if isinstance(given, list) else []
        negated = [e for e in entries if isinstance(e, str) and e.startswith("!")]
        if negated:  # Xray ANDs them with the rest: dropping one would widen the rule
            raise RuleDropped(node.at(key), f"negated entry {negated[0]!r} (Xray) has no "
                              "equivalent")  # fmt: skip
    table = Table(None)
    table.note(f"{node.path}")
    outbound = _target(ctx, node, balancers)
    domains = _entries(node, ("domain", "domains"), domain_entry)
    ips = _entries(node, ("ip",), ip_entry)
    sources = _entries(node, ("source", "sourceIP"), ip_entry)
    if domains:
        table.set("domain", domains)
    if ips:
        table.set("ip", ips)
    for key, ours in (("port", "port"), ("sourcePort", "source_port")):
        ports = _ports(node, key)
        if ports is not None:
            table.set(ours, ports)
    network = node.take("network")
    if network is not None:
        wanted = networks(network)
        if not wanted:
            raise RuleDropped(node.at("network"), f"network {network!r} is not tcp/udp")
        table.set("network", wanted)
    if sources:
        table.set("source", sources)
    inbound = _inbound_tags(ctx, node)
    if inbound:
        table.set("inbound_tag", inbound)
    protocols = _entries(node, ("protocol",), _protocol)
    if protocols:
        table.set("protocol", protocols)
    if len(table.entries) == 0:
        raise RuleDropped(node.path, "no condition (v2ray rejects such a rule)")
    table.set("outbound", outbound)
    return table


def _target(ctx: V2rayContext, node: Node, balancers: dict[str, str]) -> str:
    tag = node.text("outboundTag")
    if tag is None:
        balancer = node.text("balancerTag")
        if balancer is None:
            raise RuleDropped(node.path, "neither outboundTag nor balancerTag")
        if balancer not in balancers:
            raise RuleDropped(node.at("balancerTag"), f"balancer {balancer!r} was not "
                              "converted")  # fmt: skip
        return balancers[balancer]
    node.ignore("balancerTag")  # both: v2ray uses outboundTag
    if tag in ctx.outbound_tags:
        return ctx.outbound_tags[tag]
    ctx.report.omit(
        node.at("outboundTag"),
        f"no outbound {tag!r}: v2ray sends such flows "
        f"to the default outbound, so does this rule ({ctx.default_outbound!r})",
    )
    return ctx.default_outbound


def _entries(node: Node, keys: tuple[str, ...], convert: Callable[[str], str]) -> list[str]:
    """The converted entries of list ``keys[0]`` (or an alias); a list that had entries
    but keeps none drops the rule."""
    present = next((k for k in keys if k in node.raw), keys[0])
    given = node.texts(*keys)
    kept = []
    for i, entry in enumerate(given):
        try:
            kept.append(convert(entry))
        except BadValue as exc:
            node.report.omit(f"{node.at(present)}[{i}]", f"{exc}; entry dropped")
    if given and not kept:
        raise RuleDropped(node.at(present), "no entry of this condition could be converted")
    return list(dict.fromkeys(kept))


def _protocol(name: str) -> str:
    ours = _PROTOCOLS.get(name.lower())
    if ours is None:
        raise BadValue(f"protocol {name!r} is not sniffed here")
    return ours


def _ports(node: Node, key: str) -> str | int | None:
    item = node.take(key)
    if item is None:
        return None
    if isinstance(item, int) and not isinstance(item, bool):
        item = str(item)
    if not isinstance(item, str):
        raise RuleDropped(node.at(key), f"bad port list {item!r}")
    text = item.replace(" ", "")
    try:
        ranges = PortRanges.parse(text)
    except BadValue as exc:
        raise RuleDropped(node.at(key), str(exc)) from None
    single = ranges.ranges[0][0] if len(ranges.ranges) == 1 else None
    return single if single is not None and ranges.ranges[0][1] == single else str(ranges)


def _inbound_tags(ctx: V2rayContext, node: Node) -> list[str]:
    given = node.texts("inboundTag")
    # DNS queries carry dns.tag in routing; without one, v2ray's match no inbound rule.
    dns_tag = entry_value(ctx.draft.dns, "tag")
    kept = [tag for tag in given if tag in ctx.inbound_tags or tag == dns_tag]
    for i, tag in enumerate(given):
        if tag in kept:
            continue
        if tag in ctx.dns_listeners:
            why = f"inbound {tag!r} became dns.listen"
        elif tag in ctx.source_inbound_tags:
            why = f"inbound {tag!r} was not converted"
        else:
            why = f"no inbound {tag!r} exists (v2ray ignores it)"
        if given and not kept:
            raise RuleDropped(node.at("inboundTag"), f"{why}; the rule names no other inbound")
        ctx.report.omit(f"{node.at('inboundTag')}[{i}]", f"{why}; entry dropped")
    return kept
