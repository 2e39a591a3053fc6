"""Clash / mihomo ``rules``, ``dns`` and ``hosts`` -> ``[[routing.rules]]`` and ``[dns]``.

Rules are converted one to one, in order (first match wins in both); ``MATCH`` becomes
a rule on ``network = ["tcp", "udp"]`` (it matches every flow) and its target is also
the default outbound; rules after it are unreachable and reported. mihomo resolves a
domain for an IP rule unless the rule says ``no-resolve``; ours decide that for all rules
at once (``routing.domain_strategy``): ``ip_on_demand`` when any IP rule resolves,
``as_is`` when none does, and each ``no-resolve`` that cannot be honoured is reported.

DNS: ``nameserver-policy`` entries become servers for their domains only
(``skip_fallback``); ``nameserver`` servers come next, and when there is a ``fallback``
list they carry ``expect_ips = ["geoip:CN"]`` (mihomo's ``fallback-filter`` default:
an answer outside CN is replaced by the fallback's), then the ``fallback`` servers.
``default-nameserver`` servers are asked only for the names of the servers above.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from ..config.errors import BadValue
from ..config.values import PortRanges, check_domain_entry, check_ip_entry
from .clash_objects import ClashContext, listen_address, wildcard_entry
from .draft import checked_dns_address, host_port, host_values, is_ip, normalise_cidr
from .report import Node
from .toml_out import Table, Value

__all__ = ["convert_dns", "convert_rules", "match_target"]

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


# --- dns ---------------------------------------------------------------------------


def convert_dns(ctx: ClashContext, root: Node) -> None:
    _hosts(ctx, root.node("hosts"))
    dns = root.node("dns")
    if dns is None:
        return
    if dns.flag("enable") is False:
        ctx.report.omit(dns.path, "dns.enable is false: mihomo uses the system resolver; "
                        "no servers converted")  # fmt: skip
        dns.ignore(*dns.raw)
        return
    listen = dns.text("listen")
    address = listen_address(listen, "0.0.0.0") if listen else None
    if address is not None:
        ctx.draft.dns.set("listen", [address])
    elif listen:
        ctx.report.omit(dns.at("listen"), f"{listen!r} is not host:port; not converted")
    if dns.flag("ipv6") is not True and root.raw.get("ipv6") is not False:
        ctx.draft.dns.set("query_strategy", "use_ipv4", "mihomo's dns.ipv6 is off")
    mode = (dns.text("enhanced-mode") or "redir-host").lower()
    if mode == "fake-ip":
        ctx.report.omit(dns.at("enhanced-mode"), "fake-ip has no equivalent: real addresses "
                        "are answered, domains are learned by sniffing")  # fmt: skip
    dns.ignore("enable", "use-hosts", "use-system-hosts", "cache-algorithm", "prefer-h3")
    servers = _Servers(ctx)
    fallback = dns.texts("fallback")
    filter_node = dns.node("fallback-filter")
    expect: list[str] = []
    if fallback:
        geoip = filter_node.flag("geoip") if filter_node else None
        code = (filter_node.text("geoip-code") if filter_node else None) or "CN"
        if geoip is not False:
            expect = [f"geoip:{code.lower()}"]
    if filter_node is not None:
        filter_node.leftovers("fallback-filter: only geoip / geoip-code are converted")
    policy = dns.node("nameserver-policy")
    if policy is not None:
        for key, value in policy.raw.items():
            policy.ignore(key)
            servers.policy(policy.at(str(key)), str(key), value)
    for i, address in enumerate(dns.texts("nameserver")):
        servers.add(f"{dns.at('nameserver')}[{i}]", address, expect=expect)
    for i, address in enumerate(fallback):
        servers.add(f"{dns.at('fallback')}[{i}]", address)
    servers.bootstrap(dns)
    dns.leftovers()


def _hosts(ctx: ClashContext, hosts: Node | None) -> None:
    if hosts is None:
        return
    for name, value in hosts.raw.items():
        hosts.ignore(name)
        path = hosts.at(str(name))
        values = [value] if isinstance(value, str) else value
        if not host_values(values):
            ctx.report.omit(path, "expected IP addresses or host names; dropped")
            continue
        try:
            key = check_domain_entry(wildcard_entry(str(name)))
        except BadValue as exc:
            ctx.report.omit(path, f"{exc}; dropped")
            continue
        ctx.draft.dns_hosts.set(key, [str(v) for v in values])


class _Servers:
    def __init__(self, ctx: ClashContext) -> None:
        self.ctx = ctx
        self.names: list[str] = []  # host names of servers, for default-nameserver

    def policy(self, path: str, key: str, value: object) -> None:
        domains = []
        for pattern in (p.strip() for p in key.split(",")):
            if pattern.lower().startswith("rule-set:"):
                self.ctx.report.omit(path, "rule sets have no equivalent; not converted")
                return
            geosite = pattern.lower().startswith("geosite:")
            entry = pattern if geosite else wildcard_entry(pattern)
            try:
                domains.append(check_domain_entry(entry))
            except BadValue as exc:
                self.ctx.report.omit(path, f"{exc}; not converted")
                return
        addresses = [value] if isinstance(value, str) else value
        if not isinstance(addresses, list):
            self.ctx.report.omit(path, "expected a server or a list of servers")
            return
        for i, address in enumerate(addresses):
            self.add(f"{path}[{i}]", str(address), domains=domains, skip_fallback=True)

    def add(self, path: str, address: str, *, domains: list[str] | None = None,
            expect: list[str] | None = None, skip_fallback: bool = False) -> None:  # fmt: skip
        try:
            ours, outbound = self._address(address)
        except BadValue as exc:
            self.ctx.report.omit(path, f"{exc}; server not converted")
            return
        table = Table(None)
        table.note(path)
        table.set("address", ours)
        if domains:
            table.set("domains", domains)
        if expect:
            table.set("expect_ips", expect)
        if skip_fallback:
            table.set("skip_fallback", True)
        if outbound:
            table.set("outbound", outbound)
        self.ctx.draft.dns_servers.append(table)

    def _address(self, address: str) -> tuple[str, str | None]:
        text, _, via = address.partition("#")
        outbound = None
        if via:
            if "=" in via:
                raise BadValue(f"server parameters {via!r} have no equivalent")
            outbound = self.ctx.tag_for(via)
            if outbound is None:
                raise BadValue(f"no proxy or group {via!r}")
        if "://" not in text:
            text = f"udp://{text}"
        try:
            parts = urlsplit(text)
            scheme, host, port = parts.scheme.lower(), parts.hostname or "", parts.port
        except ValueError:
            raise BadValue(f"{address!r} is not a server address") from None
        if scheme not in ("udp", "tcp", "tls", "https"):
            raise BadValue(f"{scheme}:// DNS servers have no equivalent")
        if not host:
            raise BadValue(f"no host in {address!r}")
        if not is_ip(host):
            if scheme in ("udp", "tcp"):
                raise BadValue(f"plain DNS server {host!r} must be an IP address")
            self.names.append(host)
        ours = host_port(host, port or 53) if scheme == "udp" else text
        return checked_dns_address(ours), outbound

    def bootstrap(self, dns: Node) -> None:
        defaults = dns.texts("default-nameserver")
        names = list(dict.fromkeys(self.names))
        if not names:
            return
        domains = [f"full:{name}" for name in names]
        for i, address in enumerate(defaults):
            self.add(f"{dns.at('default-nameserver')}[{i}]", address, domains=domains,
                     skip_fallback=True)  # fmt: skip
