"""v2ray v4 / Xray JSON: ``log``, the transparent ``dokodemo-door`` inbounds (reference
section 1), ``sniffing`` (section 2), ``policy`` level 0, and the firewall mark.
"""

from __future__ import annotations

from .draft import checked_entries, is_ip, unique_tag
from .report import Node
from .toml_out import Table
from .v2ray_context import V2rayContext, networks, objects

__all__ = ["FORWARDER_WHY", "convert_inbounds", "convert_log", "convert_policy"]

_LOG_LEVELS = {"debug": "debug", "info": "info", "warning": "warning", "error": "error"}
_SNIFF_PROTOCOLS = {"http": "http", "tls": "tls", "https": "tls", "ssl": "tls", "quic": "quic"}
_MAX_BUFFER_KIB = 1 << 20  # 1 GiB per flow is already absurd; TOML integers are 64-bit
_POLICY_TIMES = {"handshake": "handshake", "connIdle": "conn_idle",
                 "uplinkOnly": "uplink_only", "downlinkOnly": "downlink_only"}  # fmt: skip


FORWARDER_WHY = (
    "dokodemo-door without followRedirect forwards to one fixed address (port "
    "mapping): no equivalent"
)


def convert_log(ctx: V2rayContext, root: Node) -> None:
    log = root.node("log")
    if log is None:
        ctx.draft.log.set("level", "warning", "v2ray's default")
    _log(log, ctx.draft.log)


def convert_inbounds(ctx: V2rayContext, root: Node) -> None:
    for i, item in enumerate(objects(root, "inbounds")):
        _inbound(ctx, item, i)
    if not ctx.draft.inbounds:
        _default_inbound(ctx)


def convert_policy(ctx: V2rayContext, root: Node) -> None:
    _policy(root.node("policy"), ctx.draft.policy)
    _firewall(ctx)


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
        port = node.number("port")
        if tag and port is not None:  # a DNS listener if routing sends it to a dns outbound
            ctx.forwarders[tag] = (node.path, node.text("listen") or "0.0.0.0", port)
        else:
            ctx.report.omit(node.path, FORWARDER_WHY)
        node.ignore(*node.raw)
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
    mark = sockopt.mark("mark") if sockopt else None
    timeout = settings.number("timeout")
    if timeout:
        ctx.report.omit(settings.at("timeout"), "per-inbound idle timeout: policy.conn_idle "
                        "applies to every flow")  # fmt: skip
    kind = "tproxy" if mode == "tproxy" else "redirect"
    if kind == "redirect" and "udp" in wanted:
        # followRedirect without sockopt.tproxy is forced to "redirect" (TCP only).
        ctx.report.omit(settings.at("network"), "udp needs sockopt.tproxy = \"tproxy\"; "
                        "over REDIRECT v2ray receives no UDP either: tcp only")  # fmt: skip
        wanted = ["tcp"]
    free = ctx.draft.free_networks(port, wanted)
    if free != wanted:
        taken = "/".join(n for n in wanted if n not in free)
        ctx.report.omit(node.at("port"), f"{taken} port {port} is already taken by another "
                        f"inbound{'' if free else '; inbound not converted'}")  # fmt: skip
        if not free:
            return
    table = Table(None)
    table.note(f"{node.path}: dokodemo-door, sockopt.tproxy = {mode!r}")
    table.set("tag", unique_tag(tag or f"tproxy-in-{index}", ctx.inbound_tags))
    table.set("type", kind)
    table.set("listen", _listen(ctx, node))
    table.set("port", port)
    table.set("network", free)
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


def _listen(ctx: V2rayContext, node: Node) -> str:
    listen = node.text("listen") or "0.0.0.0"
    if listen in ("0.0.0.0", "::"):
        return "::"  # Go listens on both families for a wildcard address
    if not is_ip(listen):
        ctx.report.omit(node.at("listen"), f"{listen!r} is not an IP address: listening on ::")
        return "::"
    return listen


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


def _default_inbound(ctx: V2rayContext) -> None:
    ctx.report.omit("$.inbounds", "no transparent dokodemo-door inbound; a tproxy inbound on "
                    "port 12345 was added")  # fmt: skip
    table = Table(None)
    table.note("added: the source has no transparent inbound")
    tag = unique_tag("tproxy-in", ctx.inbound_tags)
    for key, item in (("tag", tag), ("type", "tproxy"), ("port", 12345)):
        table.set(key, item)
    ctx.draft.inbounds.append((table, None))


def _policy(policy: Node | None, table: Table) -> None:
    if policy is None:
        return
    levels = policy.node("levels")
    level0 = levels.node("0") if levels else None
    if level0 is not None:
        for theirs, ours in _POLICY_TIMES.items():
            value = level0.duration(theirs, 1)  # 0 (v2ray: no timeout) is reported
            if value:
                table.set(ours, value)
        size = level0.number("bufferSize")
        if size is not None:
            if 1 <= size <= _MAX_BUFFER_KIB:
                table.set("buffer_size", size * 1024, f"v2ray bufferSize {size} KiB")
            else:
                policy.report.omit(level0.at("bufferSize"), f"{size} KiB has no equivalent "
                                   f"(1-{_MAX_BUFFER_KIB} KiB)")  # fmt: skip
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
