"""v2ray v4 / Xray JSON: log, inbounds, outbounds, policy and firewall marks.

The field meanings follow ``reference/v2ray-semantics.md`` (sections 1, 2 and 4);
routing and DNS are converted in :mod:`.v2ray_routing`. Every key is either taken by
a converter or reported by :meth:`Node.leftovers`; an outbound whose protocol or
transport has no equivalent is written as a ``block`` outbound with the same tag, so
the rules that name it keep their places and nothing leaks out directly meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .draft import Draft, checked_entries, host_port, is_ip, order_keys, seconds, unique_tag
from .report import Node, Report, UnreadableInput
from .toml_out import Table

__all__ = ["V2rayContext", "convert_objects", "convert_policy", "networks"]

_LOG_LEVELS = {"debug": "debug", "info": "info", "warning": "warning", "error": "error"}
_FREEDOM_STRATEGIES = {"asis": "as_is", "useip": "use_ip", "useipv4": "use_ipv4",
                       "useipv6": "use_ipv6"}  # fmt: skip
# Xray's preference orders and Force* variants, read as the nearest strategy we have.
_NEAR_STRATEGIES = {"useipv4v6": "use_ip", "useipv6v4": "use_ip", "forceip": "use_ip",
                    "forceipv4": "use_ipv4", "forceipv6": "use_ipv6",
                    "forceipv4v6": "use_ip", "forceipv6v4": "use_ip"}  # fmt: skip
_SS_METHODS = {
    "aes-128-gcm": "aes-128-gcm", "aead_aes_128_gcm": "aes-128-gcm",
    "aes-256-gcm": "aes-256-gcm", "aead_aes_256_gcm": "aes-256-gcm",
    "chacha20-poly1305": "chacha20-ietf-poly1305",
    "chacha20-ietf-poly1305": "chacha20-ietf-poly1305",
    "aead_chacha20_poly1305": "chacha20-ietf-poly1305",
    "2022-blake3-aes-128-gcm": "2022-blake3-aes-128-gcm",
    "2022-blake3-aes-256-gcm": "2022-blake3-aes-256-gcm",
    "2022-blake3-chacha20-poly1305": "2022-blake3-chacha20-poly1305",
}  # fmt: skip
_SNIFF_PROTOCOLS = {"http": "http", "tls": "tls", "https": "tls", "ssl": "tls", "quic": "quic"}
_POLICY_TIMES = {"handshake": "handshake", "connIdle": "conn_idle",
                 "uplinkOnly": "uplink_only", "downlinkOnly": "downlink_only"}  # fmt: skip


class Unsupported(Exception):
    """This outbound cannot be expressed; the message says why."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(why)
        self.path = path
        self.why = why


@attrs.define
class V2rayContext:
    """What the routing and DNS parts need to know about the converted objects."""

    report: Report
    draft: Draft
    inbound_tags: set[str] = attrs.field(factory=set)  # converted
    source_inbound_tags: set[str] = attrs.field(factory=set)  # every tag in the source
    outbound_tags: dict[str, str] = attrs.field(factory=dict)  # source tag -> ours
    taken_tags: set[str] = attrs.field(factory=set)
    direct_tag: str | None = None  # the first freedom outbound (for "+local" DNS servers)
    marks: set[int] = attrs.field(factory=set)

    @property
    def default_outbound(self) -> str:
        return self.draft.outbound_tags()[0]


def convert_objects(ctx: V2rayContext, root: Node) -> None:
    """log, inbounds, outbounds (routing and DNS come after: they name these)."""
    draft = ctx.draft
    _log(root.node("log"), draft.log)
    for i, item in enumerate(_objects(root, "inbounds")):
        _inbound(ctx, item, i)
    if not draft.inbounds:
        _default_inbound(ctx, root)
    for i, item in enumerate(_objects(root, "outbounds")):
        _outbound(ctx, item, i)
    if not draft.outbounds:
        ctx.report.omit("$.outbounds", "no outbound converted; a direct outbound was added")
        ctx.outbound_tags["direct"] = unique_tag("direct", ctx.taken_tags)
        _direct_table(ctx, ctx.outbound_tags["direct"])


def convert_policy(ctx: V2rayContext, root: Node) -> None:
    _policy(root.node("policy"), ctx.draft.policy)
    _firewall(ctx)


def _objects(root: Node, key: str) -> list[Node]:
    items = root.take(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise UnreadableInput(f"{root.at(key)}: expected a list")
    nodes = []
    for i, item in enumerate(items):
        found = Node.of(item, f"{root.at(key)}[{i}]", root.report)
        if found is not None:
            nodes.append(found)
    return nodes


def _log(log: Node | None, table: Table) -> None:
    if log is None:
        return
    level = (log.text("loglevel") or "warning").lower()
    if level == "none":
        table.set("level", "error", "v2ray: none")
        log.report.omit(log.at("loglevel"), "'none' has no equivalent; errors are still logged")
    elif level in _LOG_LEVELS:
        table.set("level", _LOG_LEVELS[level])
    else:
        log.report.omit(log.at("loglevel"), f"unknown level {level!r}; not converted")
    access = log.text("access")
    if access is not None:
        table.set("access", access.lower() != "none")
        if access and access.lower() != "none":
            log.report.omit(log.at("access"), "access lines go to the log (stderr / journal), "
                            f"not to the file {access!r}")  # fmt: skip
    log.leftovers("log files and DNS logging have no equivalent; the log goes to stderr")


# --- inbounds ----------------------------------------------------------------------


def _inbound(ctx: V2rayContext, node: Node, index: int) -> None:
    protocol = node.text("protocol") or ""
    tag = node.text("tag") or ""
    if tag:
        ctx.source_inbound_tags.add(tag)
    if protocol not in ("dokodemo-door", "tunnel"):
        ctx.report.omit(
            node.path,
            f"{protocol or 'an'} inbound has no equivalent: only "
            "transparent dokodemo-door inbounds (followRedirect) are converted",
        )
        return
    settings = node.node("settings") or Node({}, node.at("settings"), ctx.report)
    if not settings.flag("followRedirect"):
        ctx.report.omit(node.path, "dokodemo-door without followRedirect forwards to one fixed "
                        "address (port mapping): no equivalent")  # fmt: skip
        return
    settings.ignore("address", "port", "userLevel")  # the original destination wins
    port = node.number("port")
    if port is None or not 1 <= port <= 65535:
        ctx.report.omit(node.at("port"), "one port 1-65535 is needed; inbound not converted")
        return
    wanted = networks(settings.take("network", "allowedNetwork")) or ["tcp"]
    stream = node.node("streamSettings")
    sockopt = stream.node("sockopt") if stream else None
    mode = (sockopt.text("tproxy") if sockopt else None) or "off"
    mark = sockopt.number("mark") if sockopt else None
    timeout = settings.number("timeout")
    if timeout:
        ctx.report.omit(settings.at("timeout"), "per-inbound idle timeout: policy.conn_idle "
                        "applies to every flow")  # fmt: skip
    table = Table(None)
    table.note(f"{node.path}: dokodemo-door, sockopt.tproxy = {mode!r}")
    table.set("tag", unique_tag(tag or f"tproxy-in-{index}", ctx.inbound_tags))
    if mode == "tproxy":
        table.set("type", "tproxy")
    else:
        # followRedirect without sockopt.tproxy is forced to "redirect" (TCP only).
        table.set("type", "redirect")
        if "udp" in wanted:
            ctx.report.omit(settings.at("network"), "udp needs sockopt.tproxy = \"tproxy\"; "
                            "over REDIRECT v2ray receives no UDP either: tcp only")  # fmt: skip
        wanted = ["tcp"]
    listen = node.text("listen") or "0.0.0.0"
    if listen in ("0.0.0.0", "::"):
        listen = "::"  # Go listens on both families for a wildcard address
    elif not is_ip(listen):
        ctx.report.omit(node.at("listen"), f"{listen!r} is not an IP address: listening on ::")
        listen = "::"
    table.set("listen", listen)
    table.set("port", port)
    table.set("network", wanted)
    if mark:
        table.set("mark", mark)
    sniffing = _sniffing(node.node("sniffing"))
    ctx.draft.inbounds.append((table, sniffing))
    node.ignore("settings", "streamSettings", "sniffing")
    for part in (sockopt, stream, settings):
        if part is not None:
            if part is stream:
                _plain_transport(part)
            part.leftovers()
    node.leftovers()


def networks(item: Any) -> list[str]:
    if isinstance(item, str):
        item = item.split(",")
    if not isinstance(item, list):
        return []
    wanted = {str(x).strip().lower() for x in item}
    return [n for n in ("tcp", "udp") if n in wanted]


def _plain_transport(stream: Node) -> None:
    network = (stream.text("network") or "tcp").lower()
    security = (stream.text("security") or "none").lower()
    if network not in ("tcp", "raw"):
        stream.report.omit(stream.at("network"), f"transport {network!r} is not converted")
    if security != "none":
        stream.report.omit(stream.at("security"), f"security {security!r} is not converted")


def _sniffing(node: Node | None) -> Table | None:
    if node is None:
        return None
    table = Table(None)
    table.set("enabled", bool(node.flag("enabled")))
    protocols: list[str] = []
    for i, name in enumerate(node.texts("destOverride")):
        ours = _SNIFF_PROTOCOLS.get(name.lower())
        if ours is None:
            node.report.omit(
                f"{node.at('destOverride')}[{i}]",
                f"{name!r} has no equivalent (no fake DNS here); not converted",
            )
        elif ours not in protocols:
            protocols.append(ours)
    table.set("dest_override", protocols)
    if node.flag("routeOnly"):
        table.set("route_only", True)
    excluded = checked_entries(node, "domainsExcluded", node.texts("domainsExcluded"))
    if excluded:
        table.set("exclude_domains", excluded)
    if node.flag("metadataOnly"):
        node.report.omit(node.at("metadataOnly"), "metadata-only sniffing is fake DNS only; "
                         "here the payload is sniffed")  # fmt: skip
    node.leftovers()
    return table


def _default_inbound(ctx: V2rayContext, root: Node) -> None:
    ctx.report.omit("$.inbounds", "no transparent dokodemo-door inbound; a tproxy inbound on "
                    "port 12345 was added")  # fmt: skip
    table = Table(None)
    table.note("added: the source has no transparent inbound")
    tag = unique_tag("tproxy-in", ctx.inbound_tags)
    for key, item in (("tag", tag), ("type", "tproxy"), ("port", 12345)):
        table.set(key, item)
    ctx.draft.inbounds.append((table, None))


# --- outbounds ---------------------------------------------------------------------


def _outbound(ctx: V2rayContext, node: Node, index: int) -> None:
    protocol = (node.text("protocol") or "").lower()
    source_tag = node.text("tag") or ""
    tag = unique_tag(source_tag or f"{protocol or 'outbound'}-{index}", ctx.taken_tags)
    ctx.outbound_tags.setdefault(source_tag, tag)
    table = Table(None)
    table.note(f"{node.path}: {protocol}")
    table.set("tag", tag)
    convert = _OUTBOUNDS.get(protocol)
    try:
        if convert is None:
            raise Unsupported(node.path, f"protocol {protocol!r} has no equivalent")
        if node.take("proxySettings") is not None:
            raise Unsupported(node.at("proxySettings"), "chaining through another outbound "
                              "has no equivalent")  # fmt: skip
        mark = _stream(node, protocol, table, ctx) if protocol != "blackhole" else None
        convert(ctx, node.node("settings") or Node({}, node.at("settings"), ctx.report), table)
    except Unsupported as exc:
        _placeholder(ctx, table, tag, exc)
        return
    if mark:
        table.set("mark", mark)
        ctx.marks.add(mark)
    order_keys(table)
    mux = node.node("mux")
    if mux is not None:
        if mux.flag("enabled"):
            ctx.report.omit(mux.path, "mux is not converted: each flow has its own connection")
        mux.ignore(*mux.raw)
    if protocol == "freedom" and ctx.direct_tag is None:
        ctx.direct_tag = tag
    ctx.draft.outbounds.append(table)
    node.leftovers()


def _placeholder(ctx: V2rayContext, table: Table, tag: str, exc: Unsupported) -> None:
    ctx.report.omit(exc.path, f"{exc.why}; written as a block outbound {tag!r} so the rules "
                    "naming it keep their places: replace it")  # fmt: skip
    table.entries = [("tag", tag, ""), ("type", "block", "")]
    table.note(
        f"PLACEHOLDER: {exc.why}. Replace with a shadowsocks, trojan, socks or http "
        "outbound (README: Bring your config)."
    )
    ctx.draft.outbounds.append(table)


def _stream(node: Node, protocol: str, table: Table, ctx: V2rayContext) -> int | None:
    """streamSettings: the mark; TLS for trojan; anything else cannot be converted."""
    stream = node.node("streamSettings")
    if stream is None:
        if protocol == "trojan":  # v2ray's trojan dials TLS only when security says so
            raise Unsupported(node.path, 'trojan without streamSettings.security "tls"')
        return None
    network = (stream.text("network") or "tcp").lower()
    if network not in ("tcp", "raw"):
        raise Unsupported(stream.at("network"), f"transport {network!r} has no equivalent")
    security = (stream.text("security") or "none").lower()
    if protocol == "trojan":
        if security != "tls":
            raise Unsupported(stream.at("security"), f"trojan over {security!r}: only TLS "
                              "is supported")  # fmt: skip
        _tls(stream.node("tlsSettings"), table)
    elif security != "none":
        raise Unsupported(stream.at("security"), f"{protocol} over {security!r} has no "
                          "equivalent")  # fmt: skip
    sockopt = stream.node("sockopt")
    mark = sockopt.number("mark") if sockopt else None
    if sockopt is not None:
        sockopt.leftovers()
    tcp = stream.node("tcpSettings", "rawSettings")
    if tcp is not None:
        header = tcp.node("header")
        kind = header.text("type") if header else None
        if kind not in (None, "none"):
            raise Unsupported(tcp.path, f"TCP header obfuscation {kind!r} has no equivalent")
        if header is not None:
            header.leftovers()
        tcp.leftovers()
    stream.leftovers()
    del ctx
    return mark


def _tls(tls: Node | None, table: Table) -> None:
    if tls is None:
        return
    sni = tls.text("serverName")
    if sni:
        table.set("sni", sni)
    alpn = tls.texts("alpn")
    if alpn:
        table.set("alpn", alpn)
    if tls.flag("allowInsecure"):
        table.set("insecure", True)
    tls.leftovers("not converted (our trojan verifies against the system store; see `ca`)")


def _first_server(settings: Node, what: str) -> Node:
    servers = list(settings.nodes("servers"))
    if not servers:
        if "address" in settings.raw:  # Xray's flat form
            return settings
        raise Unsupported(settings.path, f"{what}: no server given")
    for extra in servers[1:]:
        settings.report.omit(extra.path, "only the first server is converted")
        extra.ignore(*extra.raw)
    return servers[0]


def _address(server: Node) -> str:
    host = server.text("address") or ""
    port = server.number("port")
    if not host or port is None or not 1 <= port <= 65535:
        raise Unsupported(server.path, "a server needs an address and a port 1-65535")
    return host_port(host, port)


def _freedom(ctx: V2rayContext, settings: Node, table: Table) -> None:
    table.set("type", "direct")
    strategy = settings.text("domainStrategy")
    if strategy:
        key = strategy.lower().replace("_", "").replace("-", "")
        ours = _FREEDOM_STRATEGIES.get(key) or _NEAR_STRATEGIES.get(key)
        if ours is None:
            ctx.report.omit(settings.at("domainStrategy"), f"unknown {strategy!r}; as_is used")
        else:
            if key in _NEAR_STRATEGIES:
                ctx.report.omit(settings.at("domainStrategy"),
                                f"{strategy!r} approximated as {ours!r}")  # fmt: skip
            table.set("domain_strategy", ours)
    settings.ignore("userLevel")
    settings.leftovers()


def _blackhole(ctx: V2rayContext, settings: Node, table: Table) -> None:
    table.set("type", "block")
    response = settings.node("response")
    kind = (response.text("type") if response else None) or "none"
    if kind not in ("none", "http"):
        ctx.report.omit(settings.at("response"), f"response {kind!r} unknown; none used")
        kind = "none"
    table.set("response", kind)
    if response is not None:
        response.leftovers()
    settings.leftovers()


def _dns(ctx: V2rayContext, settings: Node, table: Table) -> None:
    del ctx
    table.set("type", "dns")
    settings.ignore("userLevel")
    settings.leftovers("no equivalent: A/AAAA are answered by the built-in DNS, other "
                       "queries go to the original destination")  # fmt: skip


def _proxy(kind: str) -> Callable[[V2rayContext, Node, Table], None]:
    def convert(ctx: V2rayContext, settings: Node, table: Table) -> None:
        version = settings.text("version")
        if kind == "socks" and version not in (None, "5"):
            raise Unsupported(settings.at("version"), f"SOCKS version {version!r}: only 5")
        server = _first_server(settings, kind)
        table.set("type", kind)
        table.set("server", _address(server))
        users = list(server.nodes("users"))
        user = users[0] if users else server if "user" in server.raw else None
        if user is not None:
            name, password = user.text("user"), user.text("pass")
            if name is not None and password is not None:
                table.set("username", name)
                table.set("password", password)
            user.ignore("level", "email")
            if user is not server:
                user.leftovers()
        for extra in users[1:]:
            ctx.report.omit(extra.path, "only the first user is converted")
            extra.ignore(*extra.raw)
        server.ignore("level", "email")
        if server is not settings:
            server.leftovers()
        settings.leftovers()

    return convert


def _shadowsocks(ctx: V2rayContext, settings: Node, table: Table) -> None:
    server = _first_server(settings, "shadowsocks")
    method = (server.text("method", "cipher") or "").lower()
    if method not in _SS_METHODS:
        raise Unsupported(server.at("method"), f"method {method!r} has no equivalent (AEAD "
                          "and 2022 methods are supported)")  # fmt: skip
    table.set("type", "shadowsocks")
    table.set("server", _address(server))
    table.set("method", _SS_METHODS[method])
    table.set("password", server.text("password") or "")
    if server.flag("uot"):
        ctx.report.omit(server.at("uot"), "UDP over TCP is not converted: UDP uses the "
                        "native Shadowsocks UDP relay")  # fmt: skip
    server.ignore("level", "email", "ivCheck")
    if server is not settings:
        server.leftovers()
    settings.leftovers()


def _trojan(ctx: V2rayContext, settings: Node, table: Table) -> None:
    del ctx
    server = _first_server(settings, "trojan")
    if server.text("flow"):
        raise Unsupported(server.at("flow"), "XTLS flow has no equivalent")
    table.set("type", "trojan")
    table.set("server", _address(server))
    table.set("password", server.text("password") or "")
    server.ignore("level", "email")
    if server is not settings:
        server.leftovers()
    settings.leftovers()


_OUTBOUNDS: dict[str, Callable[[V2rayContext, Node, Table], None]] = {
    "freedom": _freedom, "blackhole": _blackhole, "dns": _dns, "socks": _proxy("socks"),
    "http": _proxy("http"), "shadowsocks": _shadowsocks, "trojan": _trojan,
}  # fmt: skip


def _direct_table(ctx: V2rayContext, tag: str) -> None:
    table = Table(None)
    table.note("added: the source converts to no outbound")
    table.set("tag", tag)
    table.set("type", "direct")
    ctx.draft.outbounds.append(table)


# --- policy, firewall --------------------------------------------------------------


def _policy(policy: Node | None, table: Table) -> None:
    if policy is None:
        return
    levels = policy.node("levels")
    level0 = levels.node("0") if levels else None
    if level0 is not None:
        for theirs, ours in _POLICY_TIMES.items():
            value = level0.number(theirs)
            if value is not None:
                if value > 0:
                    table.set(ours, seconds(value))
                else:
                    policy.report.omit(level0.at(theirs), "0 (no timeout) has no equivalent")
        size = level0.number("bufferSize")
        if size is not None:
            if size >= 1:
                table.set("buffer_size", size * 1024, f"v2ray bufferSize {size} KiB")
            else:
                policy.report.omit(level0.at("bufferSize"), "0 (no buffer) has no equivalent")
        level0.ignore("statsUserUplink", "statsUserDownlink")
        level0.leftovers()
    if levels is not None:
        levels.leftovers("only level 0 (the dokodemo-door default) is converted")
    policy.ignore("system")  # statistics switches
    policy.leftovers()


def _firewall(ctx: V2rayContext) -> None:
    fwmark = 1
    while fwmark in ctx.marks:
        fwmark += 1
    table = ctx.draft.firewall
    table.note(
        "The diversion rules (nftables, policy routing) are ours: `trio-tproxy firewall "
        "print` shows them. v2ray's iptables rules are not part of its config."
    )
    table.set("fwmark", fwmark, "differs from every outbound mark (keeps the proxy out of "
              "its own diversion)")  # fmt: skip
