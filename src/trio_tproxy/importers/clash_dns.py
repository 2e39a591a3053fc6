"""Clash / mihomo ``dns`` and ``hosts`` -> ``[dns]``.

DNS: ``nameserver-policy`` entries become servers for their domains only
(``skip_fallback``); ``nameserver`` servers come next, and when there is a ``fallback``
list they carry ``expect_ips = ["geoip:CN"]`` (mihomo's ``fallback-filter`` default:
an answer outside CN is replaced by the fallback's), then the ``fallback`` servers.
``default-nameserver`` servers are asked only for the names of the servers above.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ..config.errors import BadValue
from ..config.values import check_domain_entry
from .clash_context import ClashContext, listen_address, wildcard_entry
from .draft import checked_dns_address, host_port, host_values, is_ip
from .report import Node
from .toml_out import Table

__all__ = ["convert_dns"]


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
    servers = _Servers(ctx, routed=bool(dns.flag("respect-rules")))
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
    if policy is not None and 0 < servers.policy_servers < len(ctx.draft.dns_servers):
        ctx.report.omit(policy.path, "if a policy's servers all fail, the other servers are "
                        "asked next (mihomo answers from the policy's servers only)")  # fmt: skip
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
    def __init__(self, ctx: ClashContext, *, routed: bool) -> None:
        self.ctx = ctx
        self.routed = routed  # respect-rules: queries follow the rules
        self.names: list[str] = []  # host names of servers, for default-nameserver
        self.policy_servers = 0

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
            before = len(self.ctx.draft.dns_servers)
            self.add(f"{path}[{i}]", str(address), domains=domains, skip_fallback=True)
            self.policy_servers += len(self.ctx.draft.dns_servers) - before

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
        elif not self.routed:
            # mihomo asks its name servers directly unless told otherwise (#proxy,
            # respect-rules); ours are routed like flows unless `outbound` says where.
            table.set("outbound", self.ctx.tag_for("DIRECT") or "DIRECT")
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
