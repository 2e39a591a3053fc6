"""Clash / mihomo general keys (log level, mode, routing-mark, controller, client ports)
and the transparent inbounds: ``tproxy-port`` / ``redir-port`` with the ``sniffer``.
"""

from __future__ import annotations

import ipaddress

from .clash_context import ClashContext, listen_address, wildcard_entry
from .draft import checked_entries, is_ip
from .report import Node
from .toml_out import Table

__all__ = ["convert_general"]

_LOG_LEVELS = {"debug": "debug", "info": "info", "warning": "warning", "error": "error",
               "silent": "error"}  # fmt: skip
# Keys that only matter to a client app, a dashboard or mihomo's own process.
_HARMLESS = ("allow-lan", "bind-address", "lan-allowed-ips", "lan-disallowed-ips",
             "unified-delay", "tcp-concurrent", "find-process-mode", "global-client-fingerprint",
             "keep-alive-interval", "keep-alive-idle", "disable-keep-alive", "profile",
             "geodata-mode", "geodata-loader", "geo-auto-update", "geo-update-interval",
             "geox-url", "global-ua", "etag-support")  # fmt: skip


def convert_general(ctx: ClashContext, root: Node) -> None:
    """General keys and the inbounds (proxies and rules come after)."""
    _general(ctx, root)
    _inbounds(ctx, root)
    root.ignore(*_HARMLESS)


def _general(ctx: ClashContext, root: Node) -> None:
    level = root.text("log-level")
    if level:
        ours = _LOG_LEVELS.get(level.lower())
        if ours is None:
            ctx.report.omit(root.at("log-level"), f"unknown level {level!r}; info used")
        else:
            ctx.draft.log.set("level", ours)
    mode = (root.text("mode") or "rule").lower()
    if mode != "rule":
        ctx.report.omit(root.at("mode"), f"mode {mode!r} is not converted: rules decide")
    if root.flag("ipv6") is False:
        ctx.draft.dns.set("query_strategy", "use_ipv4", "ipv6: false")
    ctx.mark = root.mark("routing-mark")
    controller = root.text("external-controller")
    listen = listen_address(controller, "0.0.0.0") if controller else None
    if controller and listen is None:
        ctx.report.omit(root.at("external-controller"), f"{controller!r} is not host:port; "
                        "no controller API configured")  # fmt: skip
    secret = root.text("secret")
    if listen is not None and not secret and not _loopback(listen):
        ctx.report.omit(root.at("external-controller"), f"{listen} is reachable from the "
                        "network without a secret: not converted (set api.secret)")  # fmt: skip
        listen = None
    if listen is not None:
        table = ctx.draft.api
        table.set("listen", listen)
        if secret:
            table.set("secret", secret)
        ui = root.text("external-ui")
        if ui:
            ctx.report.omit(root.at("external-ui"), "set api.ui_dir to the dashboard's "
                            "absolute directory yourself")  # fmt: skip
    for key in ("port", "socks-port", "mixed-port"):
        if root.take(key) is not None:
            ctx.report.omit(root.at(key), "proxy ports for clients that are set up to use "
                            "one have no equivalent: only transparent inbounds")  # fmt: skip


def _loopback(listen: str) -> bool:
    host = listen.rpartition(":")[0].strip("[]")
    return host == "localhost" or (is_ip(host) and ipaddress.ip_address(host).is_loopback)


def _inbounds(ctx: ClashContext, root: Node) -> None:
    sniffing = _sniffer(root.node("sniffer"))
    for key, kind_, tag in (("tproxy-port", "tproxy", "tproxy-in"),
                            ("redir-port", "redirect", "redir-in")):  # fmt: skip
        port = root.number(key)
        if port is None:
            continue
        if not 1 <= port <= 65535:
            ctx.report.omit(root.at(key), f"port {port} out of range; not converted")
            continue
        _add_inbound(ctx, root.at(key), tag, kind_, port, sniffing=sniffing)
    if not ctx.draft.inbounds:
        ctx.report.omit("$", "no tproxy-port or redir-port: a tproxy inbound on port 7893 "
                        "(mihomo's usual tproxy-port) was added")  # fmt: skip
        _add_inbound(ctx, "added", "tproxy-in", "tproxy", 7893, sniffing=sniffing)


def _add_inbound(
    ctx: ClashContext, path: str, tag: str, kind_: str, port: int, *, sniffing: Table | None
) -> None:
    networks = ctx.draft.free_networks(port, ["tcp", "udp"] if kind_ == "tproxy" else ["tcp"])
    if not networks:
        ctx.report.omit(path, f"port {port} is already taken by another inbound; not converted")
        return
    table = Table(None)
    table.note(path)
    table.set("tag", tag)
    table.set("type", kind_)
    table.set("port", port)
    table.set("network", networks)
    if ctx.mark:
        table.set("mark", ctx.mark)
    ctx.inbounds[tag] = (port, kind_)
    copy = None
    if sniffing is not None:
        copy = Table(None, comments=list(sniffing.comments), entries=list(sniffing.entries))
    ctx.draft.inbounds.append((table, copy))


def _sniffer(node: Node | None) -> Table | None:
    if node is None:
        return None
    table = Table(None)
    table.note("from $.sniffer")
    table.set("enabled", bool(node.flag("enable")))
    protocols: list[str] = []
    sniff = node.node("sniff")
    if sniff is not None:
        for proto in list(sniff.raw):
            ours = {"http": "http", "tls": "tls", "quic": "quic"}.get(str(proto).lower())
            settings = sniff.node(str(proto))
            if ours is None:
                node.report.omit(sniff.at(str(proto)), "not sniffed here")
                continue
            protocols.append(ours)
            if settings is not None:
                if settings.take("ports") is not None:
                    node.report.omit(settings.at("ports"), "every port is sniffed here")
                override = settings.flag("override-destination")
                if override is False:
                    table.set("route_only", True)
                settings.leftovers()
        sniff.leftovers()
    for legacy in node.texts("sniffing"):  # Clash Premium's older form
        if legacy.lower() in ("http", "tls", "quic"):
            protocols.append(legacy.lower())
    table.set("dest_override", list(dict.fromkeys(protocols)) or ["http", "tls", "quic"])
    if node.flag("override-destination") is False:
        table.set("route_only", True)
    skip = checked_entries(
        node, "skip-domain", [wildcard_entry(d) for d in node.texts("skip-domain")]
    )
    if skip:
        table.set("exclude_domains", skip)
    node.ignore("parse-pure-ip")
    node.leftovers()
    return table
