"""v2ray v4 / Xray ``dns`` (reference section 5) -> ``[dns]``: servers (strings and
objects), hosts, queryStrategy, disableCache, disableFallback, tag. ``+local`` servers
are sent through the first freedom outbound (never through a proxy); ``localhost``
alone means the system resolver, which is what no servers means here.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config.errors import BadValue
from ..config.values import check_domain_entry
from .draft import checked_dns_address, host_port, host_values, is_ip
from .report import Node
from .toml_out import Table
from .v2ray_context import V2rayContext
from .v2ray_routing import domain_entry, ip_entry

__all__ = ["convert_dns"]

_QUERY_STRATEGIES = {"useip": "use_ip", "useipv4": "use_ipv4", "useipv6": "use_ipv6"}


def convert_dns(ctx: V2rayContext, dns: Node | None) -> None:
    if dns is None:
        return
    table = ctx.draft.dns
    tag = dns.text("tag")
    if tag:
        table.set("tag", tag, "the inbound tag DNS queries carry in routing")
    strategy = dns.text("queryStrategy")
    if strategy:
        ours = _QUERY_STRATEGIES.get(strategy.lower())
        if ours is None:
            ctx.report.omit(dns.at("queryStrategy"), f"unknown {strategy!r}; use_ip used")
        else:
            table.set("query_strategy", ours)
    if dns.flag("disableCache"):
        table.set("cache", False)
    if dns.flag("disableFallback"):
        table.set("disable_fallback", True)
    _hosts(ctx, dns.node("hosts"))
    servers = list(_server_nodes(dns))
    only_system = bool(servers) and all(s[1] == "localhost" for s in servers)
    for path, item in servers:
        if only_system:
            break  # no servers = the system resolver, which is what "localhost" is
        _server(ctx, path, item)
    dns.leftovers()


def _server_nodes(dns: Node) -> list[tuple[str, object]]:
    items = dns.take("servers")
    if items is None:
        return []
    if not isinstance(items, list):
        dns.report.omit(dns.at("servers"), "expected a list; ignored")
        return []
    return [(f"{dns.at('servers')}[{i}]", item) for i, item in enumerate(items)]


def _hosts(ctx: V2rayContext, hosts: Node | None) -> None:
    if hosts is None:
        return
    for name, item in hosts.raw.items():
        path = hosts.at(str(name))
        hosts.ignore(name)
        values = [item] if isinstance(item, str) else item
        if not host_values(values):
            ctx.report.omit(path, "expected IP addresses or host names; dropped")
            continue
        try:
            key = str(name)
            if not key.lower().startswith("ext:"):
                check_domain_entry(key)
        except BadValue as exc:
            ctx.report.omit(path, f"{exc}; dropped")
            continue
        ctx.draft.dns_hosts.set(key, [str(v) for v in values])


def _server(ctx: V2rayContext, path: str, item: object) -> None:
    if isinstance(item, str):
        node = Node({"address": item}, path, ctx.report)
    else:
        found = Node.of(item, path, ctx.report)
        if found is None:
            return
        node = found
    address = node.text("address") or ""
    port = node.number("port")
    table = Table(None)
    table.note(path)
    try:
        ours, via_direct = _server_address(address, port)
    except BadValue as exc:
        ctx.report.omit(path, f"{exc}; server not converted")
        return
    table.set("address", ours)
    domains = _server_entries(node, "domains", domain_entry)
    expect = _server_entries(node, "expectIPs", ip_entry, case_insensitive=True)
    if domains:
        table.set("domains", domains)
    if expect:
        table.set("expect_ips", expect)
    if node.flag("skipFallback"):
        table.set("skip_fallback", True)
    if via_direct:
        if ctx.direct_tag is None:
            ctx.report.omit(node.at("address"), "'+local' means not routed, but there is no "
                            "freedom outbound to send it through; routed")  # fmt: skip
        else:
            table.set("outbound", ctx.direct_tag, "'+local': never routed through a proxy")
    timeout = node.duration("timeoutMs", 0.001)
    if timeout:
        table.set("timeout", timeout)
    ctx.draft.dns_servers.append(table)
    if isinstance(item, dict):
        node.leftovers()


def _server_entries(
    node: Node, key: str, convert: Callable[[str], str], case_insensitive: bool = False
) -> list[str]:
    given = node.take_ci(key) if case_insensitive else node.take(key)
    if given is None:
        return []
    entries = [given] if isinstance(given, str) else given
    kept = []
    for i, entry in enumerate(entries if isinstance(entries, list) else []):
        try:
            kept.append(convert(str(entry)))
        except BadValue as exc:
            node.report.omit(f"{node.at(key)}[{i}]", f"{exc}; entry dropped")
    return kept


def _server_address(address: str, port: int | None) -> tuple[str, bool]:
    """Our address for a v2ray DNS server, and whether it must bypass routing."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        if address == "localhost":
            raise BadValue("'localhost' (the system resolver) next to other servers has no "
                           "equivalent")  # fmt: skip
        if address == "fakedns":
            raise BadValue("fake DNS has no equivalent")
        if not is_ip(address):
            raise BadValue(f"plain DNS server {address!r} must be an IP address")
        return checked_dns_address(host_port(address, port or 53)), False
    local = scheme.endswith("+local")
    scheme = scheme.removesuffix("+local")
    if scheme not in ("tcp", "https", "udp", "tls"):
        raise BadValue(f"{scheme}:// DNS servers have no equivalent")
    return checked_dns_address(f"{scheme}://{rest}"), local
