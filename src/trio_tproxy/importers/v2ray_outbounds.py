"""v2ray v4 / Xray JSON outbounds (reference section 4): freedom, blackhole, dns, socks,
http, shadowsocks, trojan. An outbound whose protocol or transport has no equivalent is
written as a ``block`` outbound with the same tag, so the rules that name it keep their
places and nothing leaks out directly meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config.checks import credentials_problems, shadowsocks_key_problem
from .draft import host_port, order_keys, unique_tag
from .report import Node
from .toml_out import Table
from .v2ray_context import Unsupported, V2rayContext, objects

__all__ = ["convert_outbounds"]

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


def convert_outbounds(ctx: V2rayContext, root: Node) -> None:
    for i, item in enumerate(objects(root, "outbounds")):
        _outbound(ctx, item, i)
    if not ctx.draft.outbounds:
        ctx.report.omit("$.outbounds", "no outbound converted; a direct outbound was added")
        ctx.outbound_tags["direct"] = unique_tag("direct", ctx.taken_tags)
        _direct_table(ctx, ctx.outbound_tags["direct"])


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
        mark = _stream(node, protocol, table) if protocol != "blackhole" else None
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
    if protocol == "dns":
        ctx.dns_outbounds.add(tag)
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


def _stream(node: Node, protocol: str, table: Table) -> int | None:
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
    mark = sockopt.mark("mark") if sockopt else None
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
                problems = credentials_problems(kind, name, password)
                if problems:  # the first makes it a placeholder
                    key, why = problems[0]
                    raise Unsupported(user.at("user" if key == "username" else "pass"), why)
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
    password = server.text("password") or ""
    problem = shadowsocks_key_problem(_SS_METHODS[method], password)
    if problem:
        raise Unsupported(server.at("password"), problem)
    table.set("password", password)
    if server.flag("uot"):
        ctx.report.omit(server.at("uot"), "UDP over TCP is not converted: UDP uses the "
                        "native Shadowsocks UDP relay")  # fmt: skip
    server.ignore("level", "email", "ivCheck")
    if server is not settings:
        server.leftovers()
    settings.leftovers()


def _trojan(ctx: V2rayContext, settings: Node, table: Table) -> None:
    server = _first_server(settings, "trojan")
    if server.text("flow"):
        raise Unsupported(server.at("flow"), "XTLS flow has no equivalent")
    table.set("type", "trojan")
    table.set("server", _address(server))
    password = server.text("password") or ""
    if not password:
        raise Unsupported(server.at("password"), "a Trojan server needs a password")
    table.set("password", password)
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
