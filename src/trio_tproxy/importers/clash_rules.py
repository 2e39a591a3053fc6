"""Clash / mihomo ``rules``, ``dns`` and ``hosts`` -> ``[[routing.rules]]`` and ``[dns]``.

Rules are converted one to one, in order (first match wins in both); ``MATCH`` becomes
a rule on ``network = ["tcp", "udp"]`` (it matches every flow) and its target is also
the default outbound; rules after it are unreachable and reported. mihomo resolves a
domain for an IP rule unless the rule says ``no-resolve``; ours decide that for all rules
at once (``routing.domain_strategy``): ``ip_on_demand`` when any IP rule resolves,
``as_is`` when none does, and each ``no-resolve`` that cannot be honoured is reported.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config.errors import BadValue
from ..config.values import PortRanges, check_domain_entry, check_ip_entry
from .clash_context import ClashContext
from .draft import normalise_cidr
from .report import Node
from .toml_out import Table, Value

__all__ = ["convert_rules", "match_target"]

_IP_RULES = ("GEOIP", "IP-CIDR", "IP-CIDR6")


class RuleDropped(Exception):
    pass


def _split(rule: str) -> list[str]:
    return [part.strip() for part in rule.split(",")]


def _rule_texts(ctx: ClashContext, root: Node) -> list[tuple[str, str]]:
    items = root.raw.get("rules")
    root.ignore("rules")
    if items is None:
        return []
    if not isinstance(items, list):
        ctx.report.omit(root.at("rules"), "expected a list; ignored")
        return []
    out = []
    for i, item in enumerate(items):
        path = f"{root.at('rules')}[{i}]"
        if isinstance(item, str):
            out.append((path, item))
        else:
            ctx.report.omit(path, "expected a string 'TYPE,VALUE,TARGET'; ignored")
    return out


def match_target(ctx: ClashContext, root: Node) -> str:
    """The tag flows get when no rule matches: MATCH's target, else DIRECT."""
    items = root.raw.get("rules")
    for item in items if isinstance(items, list) else []:
        parts = _split(item) if isinstance(item, str) else []
        if parts and parts[0].upper() == "MATCH" and len(parts) >= 2:
            tag = ctx.tag_for(parts[1])
            if tag is not None:
                return tag
            break
    ctx.tag_for("DIRECT")
    return "DIRECT"


def convert_rules(ctx: ClashContext, root: Node) -> None:
    texts = _rule_texts(ctx, root)
    converted: list[tuple[str, Table, bool | None]] = []  # path, table, resolves?
    finished = False
    for path, text in texts:
        if finished:
            ctx.report.omit(path, "after MATCH: never reached; dropped")
            continue
        try:
            table, resolves, finished = _rule(ctx, path, text)
        except RuleDropped as exc:
            ctx.report.omit(path, f"{exc}; rule dropped")
            continue
        converted.append((path, table, resolves))
        ctx.draft.rules.append(table)
    resolving = [r for _, _, r in converted if r is not None]
    if any(resolving):
        ctx.draft.routing.set(
            "domain_strategy",
            "ip_on_demand",
            "mihomo resolves a domain for IP rules without no-resolve",
        )
        for path, _, resolves in converted:
            if resolves is False:
                ctx.report.omit(path, "no-resolve cannot be set per rule: with "
                                "domain_strategy ip_on_demand this rule sees resolved "
                                "addresses too")  # fmt: skip


def _rule(ctx: ClashContext, path: str, text: str) -> tuple[Table, bool | None, bool]:
    parts = _split(text)
    kind = parts[0].upper()
    table = Table(None)
    table.note(f"{path}: {text}")
    if kind == "MATCH":
        if len(parts) < 2:
            raise RuleDropped("MATCH needs a target")
        table.set("network", ["tcp", "udp"], "MATCH: every flow")
        table.set("outbound", _target(ctx, parts[1]))
        return table, None, True
    convert = _CONDITIONS.get(kind)
    if kind in ("IN-PORT", "IN-TYPE"):
        convert = _inbound_condition(ctx, kind)
    if convert is None:
        raise RuleDropped(f"rule type {kind} has no equivalent")
    if len(parts) < 3:
        raise RuleDropped("expected 'TYPE,VALUE,TARGET'")
    value, target, options = parts[1], parts[2], [p.lower() for p in parts[3:]]
    no_resolve = "no-resolve" in options
    unknown = [o for o in options if o != "no-resolve"]
    if unknown:
        raise RuleDropped(f"option {unknown[0]!r} has no equivalent")
    key, entry = convert(value)
    table.set(key, entry)
    table.set("outbound", _target(ctx, target))
    resolves = (not no_resolve) if kind in _IP_RULES else None
    return table, resolves, False


def _inbound_condition(ctx: ClashContext, kind: str) -> Callable[[str], tuple[str, Value]]:
    """IN-PORT / IN-TYPE as the tags of the inbounds they pick."""

    def convert(value: str) -> tuple[str, Value]:
        if kind == "IN-TYPE":
            wanted = {"TPROXY": "tproxy", "REDIR": "redirect"}.get(value.upper())
            tags = [t for t, (_, k) in ctx.inbounds.items() if k == wanted]
        else:
            ranges = _ports("port")(value)[1]
            assert isinstance(ranges, str)
            ports = PortRanges.parse(ranges)
            tags = [t for t, (port, _) in ctx.inbounds.items() if port in ports]
        if not tags:
            raise RuleDropped(f"no converted inbound is {kind} {value} (only transparent ones are)")
        return "inbound_tag", tags

    return convert


def _target(ctx: ClashContext, name: str) -> str:
    tag = ctx.tag_for(name)
    if tag is None:
        raise RuleDropped(f"no proxy or group {name!r}")
    return tag


def _checked(check: Callable[[str], str], entry: str) -> str:
    try:
        return check(entry)
    except BadValue as exc:
        raise RuleDropped(str(exc)) from None


def _domain(prefix: str) -> Callable[[str], tuple[str, Value]]:
    def convert(value: str) -> tuple[str, Value]:
        return "domain", [_checked(check_domain_entry, f"{prefix}{value}")]

    return convert


def _geoip(value: str) -> tuple[str, Value]:
    code = "private" if value.upper() == "LAN" else value.lower()
    return "ip", [_checked(check_ip_entry, f"geoip:{code}")]


def _cidr(key: str) -> Callable[[str], tuple[str, Value]]:
    def convert(value: str) -> tuple[str, Value]:
        cidr = normalise_cidr(value)
        if cidr is None:
            raise RuleDropped(f"{value!r} is not a CIDR")
        return key, [cidr]

    return convert


def _ports(key: str) -> Callable[[str], tuple[str, Value]]:
    def convert(value: str) -> tuple[str, Value]:
        text = value.replace("/", ",").replace(" ", "")
        try:
            ranges = PortRanges.parse(text)
        except BadValue as exc:
            raise RuleDropped(str(exc)) from None
        return key, str(ranges)

    return convert


def _network(value: str) -> tuple[str, Value]:
    if value.lower() not in ("tcp", "udp"):
        raise RuleDropped(f"network {value!r} is not tcp or udp")
    return "network", [value.lower()]


_CONDITIONS: dict[str, Callable[[str], tuple[str, Value]]] = {
    "DOMAIN": _domain("full:"), "DOMAIN-SUFFIX": _domain("domain:"),
    "DOMAIN-KEYWORD": _domain("keyword:"), "DOMAIN-REGEX": _domain("regexp:"),
    "GEOSITE": _domain("geosite:"), "GEOIP": _geoip, "IP-CIDR": _cidr("ip"),
    "IP-CIDR6": _cidr("ip"), "SRC-IP-CIDR": _cidr("source"), "DST-PORT": _ports("port"),
    "SRC-PORT": _ports("source_port"), "NETWORK": _network,
}  # fmt: skip
