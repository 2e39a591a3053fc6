"""The JSON documents of mihomo's API, built from our config, runtime and open flows.

Field names and JSON types follow mihomo's ``hub/route`` (and what yacd, metacubexd and
zashboard read): ports as strings in connection metadata, ``chains`` never empty and
outbound first, ``history`` entries with an RFC 3339 ``time``, and so on. Built only
when a client asks; nothing here runs per packet.
"""

from __future__ import annotations

import datetime
from typing import Any

from ..config import Config, RuleConfig
from ..runtime import Runtime
from ..tracking import TrackedFlow
from ..upstreams import datagram_capable
from .groups import as_group, health_of

JsonObject = dict[str, Any]

# Clash's adapter type names, by our config's outbound type.
CLASH_TYPES = {
    "direct": "Direct", "block": "Reject", "socks": "Socks5", "http": "Http", "dns": "Dns",
    "shadowsocks": "Shadowsocks", "trojan": "Trojan", "selector": "Selector",
    "urltest": "URLTest", "fallback": "Fallback",
}  # fmt: skip
INBOUND_TYPES = {"tproxy": "TProxy", "redirect": "Redir"}


def rfc3339(unix_time: float) -> str:
    moment = datetime.datetime.fromtimestamp(unix_time, datetime.UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


# -- /proxies ---------------------------------------------------------------------------


def proxies(rt: Runtime) -> dict[str, JsonObject]:
    """Every outbound and group by name, plus mihomo's GLOBAL selector."""
    shown: dict[str, JsonObject] = {ob.tag: proxy(rt, ob.tag) for ob in rt.config.outbounds}
    tags = [ob.tag for ob in rt.config.outbounds]
    shown["GLOBAL"] = {
        **_adapter("GLOBAL", "Selector", udp=True),
        "all": tags, "now": tags[0], "hidden": False, "icon": "", "testUrl": "",
        "expectedStatus": "", "fixed": "",
    }  # fmt: skip
    return shown


def proxy(rt: Runtime, tag: str) -> JsonObject:
    """One outbound as mihomo shows a proxy (``KeyError``: no such outbound)."""
    cfg = rt.config.outbound(tag)
    outbound = rt.outbounds.get(tag)
    kind = CLASH_TYPES.get(cfg.TYPE, cfg.TYPE.capitalize())
    shown = _adapter(tag, kind, udp=datagram_capable(outbound) is not None)
    book = health_of(rt)
    if book is not None:
        shown["history"] = [{"time": rfc3339(s.time), "delay": s.delay} for s in book.history(tag)]
        shown["alive"] = book.alive(tag)
    members = getattr(cfg, "outbounds", None)
    if members is not None:  # a group
        group = as_group(outbound)
        url = getattr(cfg, "url", "")
        shown.update(
            all=list(members),
            now=group.current() if group is not None else members[0],
            hidden=False, icon="", testUrl=url, expectedStatus="",
            fixed=group.current() if group is not None and group.kind == "selector" else "",
        )  # fmt: skip
    return shown


def _adapter(name: str, kind: str, *, udp: bool) -> JsonObject:
    return {
        "name": name, "type": kind, "udp": udp, "xudp": False, "uot": False, "tfo": False,
        "mptcp": False, "smux": False, "interface": "", "dialer-proxy": "", "routing-mark": 0,
        "provider-name": "", "id": "", "alive": True, "history": [], "extra": {},
    }  # fmt: skip


# -- /rules -----------------------------------------------------------------------------

_DOMAIN_KINDS = {"full": "Domain", "domain": "DomainSuffix", "keyword": "DomainKeyword",
                 "regexp": "DomainRegex", "geosite": "GeoSite"}  # fmt: skip


def _domain_entry(entry: str) -> tuple[str, str]:
    prefix, sep, rest = entry.partition(":")
    if sep and prefix in _DOMAIN_KINDS:
        return _DOMAIN_KINDS[prefix], rest
    return "DomainKeyword", entry  # a plain entry matches as a substring (v2ray)


def _ip_entry(entry: str, kind: str) -> tuple[str, str]:
    if entry.startswith("geoip:"):
        return ("GeoIP" if kind == "IPCIDR" else "SrcGeoIP"), entry[len("geoip:") :]
    return kind, entry


def _conditions(rule: RuleConfig) -> list[list[tuple[str, str]]]:
    """The rule's fields, each a list of (mihomo type, payload) alternatives."""
    fields: list[list[tuple[str, str]]] = []
    if rule.domain:
        fields.append([_domain_entry(e) for e in rule.domain])
    if rule.ip:
        fields.append([_ip_entry(e, "IPCIDR") for e in rule.ip])
    if rule.port is not None:
        fields.append([("DstPort", str(rule.port))])
    if rule.source_port is not None:
        fields.append([("SrcPort", str(rule.source_port))])
    if rule.network:
        fields.append([("Network", n) for n in rule.network])
    if rule.source:
        fields.append([_ip_entry(e, "SrcIPCIDR") for e in rule.source])
    if rule.inbound_tag:
        fields.append([("InName", t) for t in rule.inbound_tag])
    if rule.protocol:
        fields.append([("Protocol", p) for p in rule.protocol])
    return fields


def rule_entry(rule: RuleConfig) -> tuple[str, str]:
    """(type, payload) as mihomo would show it: one condition as itself, alternatives
    as an OR, several fields as an AND (mihomo's logic-rule payload syntax)."""
    parts: list[tuple[str, str]] = []
    for alternatives in _conditions(rule):
        if len(alternatives) == 1:
            parts.append(alternatives[0])
        else:
            inner = ",".join(f"({t},{p})" for t, p in alternatives)
            parts.append(("OR", f"({inner})"))
    if len(parts) == 1:
        return parts[0]
    return "AND", "(" + ",".join(f"({t},{p})" for t, p in parts) + ")"


def rules(cfg: Config) -> list[JsonObject]:
    """Routing rules in order, then the default outbound as mihomo's final MATCH."""
    shown = []
    for index, rule in enumerate(cfg.routing.rules):
        kind, payload = rule_entry(rule)
        shown.append({"index": index, "type": kind, "payload": payload,
                      "proxy": rule.outbound, "size": -1})  # fmt: skip
    shown.append({"index": len(shown), "type": "Match", "payload": "",
                  "proxy": cfg.outbounds[0].tag, "size": -1})  # fmt: skip
    return shown


# -- /connections -----------------------------------------------------------------------


def connections(rt: Runtime) -> JsonObject:
    tracker = rt.tracker
    up, down = tracker.totals()
    rules_by_index = {}
    for index, rule in enumerate(rt.config.routing.rules):
        rules_by_index[index] = rule_entry(rule)
    shown = [connection(flow, rules_by_index) for flow in tracker if flow.record.decision]
    return {"downloadTotal": down, "uploadTotal": up, "connections": shown, "memory": 0}


def connection(flow: TrackedFlow, rules_by_index: dict[int, tuple[str, str]]) -> JsonObject:
    record = flow.record
    decision = record.decision
    rule_index = decision.rule_index if decision is not None else None
    # The rule list may have changed since the flow was routed (reload): then the
    # flow's rule is shown by number.
    if rule_index is None:
        rule, payload = "Match", ""
    else:
        rule, payload = rules_by_index.get(rule_index, (f"rule[{rule_index}]", ""))
    sniffed = record.domain if record.protocol is not None else None
    return {
        "id": flow.id,
        "metadata": {
            "network": flow.network,
            "type": INBOUND_TYPES.get(flow.inbound_type, flow.inbound_type),
            "sourceIP": str(record.src[0]), "destinationIP": str(record.dst[0]),
            "sourceGeoIP": None, "destinationGeoIP": None,
            "sourceIPASN": "", "destinationIPASN": "",
            "sourcePort": str(record.src[1]), "destinationPort": str(record.dst[1]),
            "inboundIP": "", "inboundPort": "", "inboundName": record.inbound,
            "inboundUser": "", "host": record.domain or "", "sniffHost": sniffed or "",
            "dnsMode": "mapping" if record.domain and sniffed is None else "normal",
            "uid": 0, "process": "", "processPath": "", "specialProxy": "",
            "specialRules": "", "remoteDestination": "", "dscp": 0,
        },
        "upload": flow.counts.up,
        "download": flow.counts.down,
        "start": rfc3339(flow.start),
        "chains": list(flow.chain) or ["-"],
        "providerChains": [],
        "rule": rule,
        "rulePayload": payload,
    }  # fmt: skip
