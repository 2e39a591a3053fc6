"""Clash / mihomo ``proxies`` and ``proxy-groups`` -> ``[[outbounds]]``.

Proxies of type ss, trojan, socks5 and http become outbounds with the proxy's name as
tag; groups select, url-test and fallback become selector, urltest and fallback
(``interval`` in seconds, ``tolerance`` and ``timeout`` in milliseconds, as mihomo reads
them). The built-in policies ``DIRECT`` and ``REJECT`` / ``REJECT-DROP`` become outbounds
of those names, added where used; the target of ``MATCH`` (DIRECT when there is none, as
in mihomo) is the first outbound, our default. A proxy or group without an equivalent
is written as a block outbound of the same name, so rules and groups naming it keep
their meaning and nothing leaks out directly.
"""

from __future__ import annotations

from ..config.checks import credentials_problems, probe_url_problem, shadowsocks_key_problem
from .clash_context import BUILTIN, ClashContext
from .draft import entry_value, host_port, order_keys
from .report import Node
from .toml_out import Table

__all__ = ["assemble_outbounds", "convert_proxies"]

_SS_CIPHERS = {"aes-128-gcm": "aes-128-gcm", "aes-256-gcm": "aes-256-gcm",
               "chacha20-ietf-poly1305": "chacha20-ietf-poly1305",
               "chacha20-poly1305": "chacha20-ietf-poly1305",
               "2022-blake3-aes-128-gcm": "2022-blake3-aes-128-gcm",
               "2022-blake3-aes-256-gcm": "2022-blake3-aes-256-gcm",
               "2022-blake3-chacha20-poly1305": "2022-blake3-chacha20-poly1305"}  # fmt: skip
_GROUPS = {"select": "selector", "url-test": "urltest", "fallback": "fallback"}


def convert_proxies(ctx: ClashContext, root: Node) -> None:
    for item in _list(root, "proxies"):
        _proxy(ctx, item)
    _groups(ctx, root)


def _list(root: Node, key: str) -> list[Node]:
    return list(root.nodes(key))


def _proxy(ctx: ClashContext, node: Node) -> None:
    name = node.text("name") or ""
    kind_ = (node.text("type") or "").lower()
    if not name:
        ctx.report.omit(node.path, "a proxy without a name cannot be named by rules; skipped")
        return
    if name in ctx.names or name in BUILTIN:
        ctx.report.omit(node.at("name"), f"name {name!r} is already taken; skipped")
        return
    table = Table(None)
    table.note(f"{node.path}: {kind_} proxy")
    table.set("tag", name)
    ctx.names[name] = name
    ctx.tables[name] = table
    convert = {"ss": _ss, "trojan": _trojan, "socks5": _socks, "http": _http}.get(kind_)
    why = None if convert is not None else f"proxy type {kind_!r} has no equivalent"
    if node.take("dialer-proxy") is not None:
        why = "dialer-proxy (reaching this proxy through another) has no equivalent"
    elif convert is not None:
        why = convert(node, table)
    if why is not None:
        ctx.report.omit(node.path, f"{why}; written as a block outbound {name!r} so rules and "
                        "groups naming it keep their meaning: replace it")  # fmt: skip
        table.entries = [("tag", name, ""), ("type", "block", "")]
        table.note(
            f"PLACEHOLDER: {why}. Replace with a shadowsocks, trojan, socks or http "
            "outbound (README: Bring your config)."
        )
        return
    if ctx.mark:
        table.set("mark", ctx.mark)
    order_keys(table)
    node.ignore("name", "type")
    node.leftovers()


def _server(node: Node, table: Table) -> str | None:
    host = node.text("server") or ""
    port = node.number("port")
    if not host or port is None or not 1 <= port <= 65535:
        return "a proxy needs a server and a port 1-65535"
    table.set("server", host_port(host, port))
    return None


def _udp(node: Node, table: Table) -> None:
    if node.flag("udp") is not True:  # mihomo's default: TCP only
        table.set("network", ["tcp"])


def _ss(node: Node, table: Table) -> str | None:
    cipher = (node.text("cipher") or "").lower()
    if cipher not in _SS_CIPHERS:
        return f"cipher {cipher!r} has no equivalent (AEAD and 2022 ciphers are supported)"
    if node.take("plugin") is not None:
        return "shadowsocks plugins (obfs, v2ray-plugin, shadow-tls) have no equivalent"
    if node.flag("udp-over-tcp"):
        return "UDP over TCP has no equivalent"
    table.set("type", "shadowsocks")
    problem = _server(node, table)
    table.set("method", _SS_CIPHERS[cipher])
    password = node.text("password") or ""
    table.set("password", password)
    _udp(node, table)
    node.ignore("plugin-opts", "udp-over-tcp-version")
    return problem or shadowsocks_key_problem(_SS_CIPHERS[cipher], password)


def _trojan(node: Node, table: Table) -> str | None:
    network = (node.text("network") or "tcp").lower()
    if network != "tcp":
        return f"trojan over {network!r} has no equivalent"
    if node.take("reality-opts") is not None:
        return "REALITY has no equivalent"
    table.set("type", "trojan")
    problem = _server(node, table)
    password = node.text("password") or ""
    if not password:
        problem = problem or "a Trojan proxy needs a password"
    table.set("password", password)
    sni = node.text("sni", "servername")
    if sni:
        table.set("sni", sni)
    alpn = node.texts("alpn")
    if alpn:
        table.set("alpn", alpn)
    if node.flag("skip-cert-verify"):
        table.set("insecure", True)
    _udp(node, table)
    fingerprint = node.text("client-fingerprint")
    if fingerprint:
        node.report.omit(node.at("client-fingerprint"), "TLS fingerprint imitation is not "
                         "converted")  # fmt: skip
    return problem


def _socks(node: Node, table: Table) -> str | None:
    if node.flag("tls"):
        return "SOCKS5 over TLS has no equivalent"
    table.set("type", "socks")
    problem = _server(node, table)
    problem = _credentials(node, table, "socks") or problem
    if node.flag("udp") is not True:  # mihomo's default: no UDP through a SOCKS5 proxy
        node.report.omit(node.path, "UDP flows routed here are relayed by UDP ASSOCIATE "
                         "(mihomo relays UDP only with udp: true)")  # fmt: skip
    node.ignore("skip-cert-verify")
    return problem


def _http(node: Node, table: Table) -> str | None:
    if node.flag("tls"):
        return "an HTTPS proxy (tls: true) has no equivalent"
    table.set("type", "http")
    problem = _server(node, table)
    problem = _credentials(node, table, "http") or problem
    node.ignore("skip-cert-verify", "sni")
    return problem


def _credentials(node: Node, table: Table, kind: str) -> str | None:
    """The proxy's user and password; why they cannot be sent, if so (the proxy then
    becomes a placeholder, as check would reject it)."""
    user, password = node.text("username"), node.text("password")
    if user is not None and password is not None:
        problems = credentials_problems(kind, user, password)
        if problems:  # the first makes it a placeholder
            return problems[0][1]
        table.set("username", user)
        table.set("password", password)
    return None


def _groups(ctx: ClashContext, root: Node) -> None:
    nodes = _list(root, "proxy-groups")
    for node in nodes:  # names first: groups may name groups defined later
        name = node.text("name") or ""
        if name and name not in ctx.names and name not in BUILTIN:
            ctx.names[name] = name
    for node in nodes:
        _group(ctx, node)


def _group(ctx: ClashContext, node: Node) -> None:
    name = node.text("name") or ""
    kind_ = (node.text("type") or "").lower()
    if not name or name in ctx.tables:
        ctx.report.omit(node.path, "a group needs a name no other proxy or group has; skipped")
        return
    table = Table(None)
    table.note(f"{node.path}: {kind_} group")
    table.set("tag", name)
    ctx.tables[name] = table
    ctx.group_paths[name] = node.at("proxies")
    members = []
    for i, member in enumerate(node.texts("proxies")):
        tag = ctx.tag_for(member)
        if tag is None:
            ctx.report.omit(f"{node.at('proxies')}[{i}]", f"no proxy or group {member!r}; "
                            "member dropped")  # fmt: skip
        else:
            members.append(tag)
    for key in ("use", "include-all", "include-all-proxies", "include-all-providers"):
        if node.take(key) is not None:
            ctx.report.omit(node.at(key), "proxy providers have no equivalent; their proxies "
                            "are not members")  # fmt: skip
    ours = _GROUPS.get(kind_)
    why = None if ours else f"group type {kind_!r} has no equivalent"
    if ours and not members:
        why = "no member could be converted"
    if why is not None:
        ctx.report.omit(node.path, f"{why}; written as a block outbound {name!r} so rules "
                        "naming it keep their meaning: replace it")  # fmt: skip
        table.entries = [("tag", name, ""), ("type", "block", "")]
        table.note(f"PLACEHOLDER: {why}.")
        node.ignore(*node.raw)
        return
    assert ours is not None
    table.set("type", ours)
    table.set("outbounds", list(dict.fromkeys(members)))
    if ours != "selector" or "url" in node.raw:
        url = node.text("url")
        problem = probe_url_problem(url) if url else None
        if problem:
            ctx.report.omit(node.at("url"), f"{problem}; the default probe URL is used")
        elif url:
            table.set("url", url)
        interval = node.duration("interval", 1)
        if interval:
            table.set("interval", interval)
        timeout = node.duration("timeout", 0.001)
        if timeout:
            table.set("timeout", timeout)
    tolerance = node.duration("tolerance", 0.001, zero=True)
    if tolerance and ours == "urltest":
        table.set("tolerance", tolerance)
    node.ignore("name", "type", "lazy", "icon", "hidden", "expected-status", "max-failed-times")
    node.leftovers()


def _break_cycles(ctx: ClashContext) -> None:
    """A group reaching itself through its members is an error here (mihomo fails to
    load it too): the member closing each cycle is dropped and reported."""
    members = {tag: entry_value(t, "outbounds") for tag, t in ctx.tables.items()}
    done: set[str] = set()

    def visit(tag: str, path: list[str]) -> None:
        group = members.get(tag)
        if not isinstance(group, list) or tag in done:
            return
        for member in list(group):
            if member in path or member == tag:
                group.remove(member)
                ctx.report.omit(ctx.group_paths[tag], f"member {member!r} closes a cycle of "
                                "groups; dropped")  # fmt: skip
            else:
                visit(member, [*path, tag])
        done.add(tag)

    for tag in list(members):
        visit(tag, [])
    for tag, group in members.items():
        if isinstance(group, list) and not group:
            ctx.report.omit(ctx.group_paths[tag], "no member left; written as a block outbound")
            ctx.tables[tag].entries = [("tag", tag, ""), ("type", "block", "")]


def assemble_outbounds(ctx: ClashContext, default: str) -> None:
    """Outbounds in source order, the built-ins added where used, the default first."""
    _break_cycles(ctx)
    for builtin in ("DIRECT", "REJECT", "REJECT-DROP"):
        if builtin in ctx.used_builtins or builtin == default:
            table = Table(None)
            table.note(f"mihomo's built-in {builtin}")
            table.set("tag", builtin)
            table.set("type", BUILTIN[builtin])
            if builtin == "DIRECT" and ctx.mark:
                table.set("mark", ctx.mark)
            ctx.tables[builtin] = table
    ordered = [ctx.tables[default]] + [t for tag, t in ctx.tables.items() if tag != default]
    ctx.draft.outbounds.extend(ordered)
    fwmark = 1 if ctx.mark != 1 else 2
    ctx.draft.firewall.note("The diversion rules are ours: `trio-tproxy firewall print` "
                            "shows them.")  # fmt: skip
    ctx.draft.firewall.set("fwmark", fwmark)
