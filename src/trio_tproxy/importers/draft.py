"""The configuration an importer builds, section by section, then writes as TOML.

Sections are :class:`~.toml_out.Table` objects without a header yet; :meth:`Draft.render`
puts them in the order of ``conf/main.toml`` with the right headers (a parent's keys
before its sub-tables, as TOML requires).
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from ..config.checks import parse_dns_address
from ..config.errors import BadValue
from ..config.values import check_domain_entry
from .report import Node
from .toml_out import Document, Table


def entry_value(table: Table, name: str, default: object = None) -> object:
    """The value a table sets for ``name`` (the last one), or ``default``."""
    found = [item for key, item, _ in table.entries if key == name]
    return found[-1] if found else default


def section() -> Table:
    return Table(None)


@attrs.frozen
class GeodataPaths:
    """Where the converted config finds its data: absolute paths, so `check` and `run`
    work from any directory. The .dat paths are empty when no such file was found."""

    geoip: str
    rules_dir: str
    geosite_dat: str = ""
    geoip_dat: str = ""


@attrs.define
class Draft:
    intro: list[str] = attrs.field(factory=list)
    log: Table = attrs.field(factory=section)
    geodata: Table = attrs.field(factory=section)
    inbounds: list[tuple[Table, Table | None]] = attrs.field(factory=list)  # + sniffing
    outbounds: list[Table] = attrs.field(factory=list)
    routing: Table = attrs.field(factory=section)
    rules: list[Table] = attrs.field(factory=list)
    dns: Table = attrs.field(factory=section)
    dns_hosts: Table = attrs.field(factory=section)
    dns_servers: list[Table] = attrs.field(factory=list)
    policy: Table = attrs.field(factory=section)
    firewall: Table = attrs.field(factory=section)
    api: Table = attrs.field(factory=section)

    def free_networks(self, port: int, networks: list[str]) -> list[str]:
        """The ``networks`` no inbound listens on at ``port`` yet (any two listeners on
        one port and network collide, whatever their addresses)."""
        taken: set[str] = set()
        for inbound, _ in self.inbounds:
            used = entry_value(inbound, "network", ())
            if entry_value(inbound, "port") == port and isinstance(used, list | tuple):
                taken.update(map(str, used))
        return [n for n in networks if n not in taken]

    def outbound_tags(self) -> list[str]:
        return [str(entry_value(ob, "tag")) for ob in self.outbounds]

    def set_geodata(self, paths: GeodataPaths) -> None:
        self.geodata.set("geoip", paths.geoip)
        self.geodata.set("rules_dir", paths.rules_dir)
        if paths.geosite_dat:
            self.geodata.set("geosite_dat", paths.geosite_dat, "geosite:NAME from this file")
        if paths.geoip_dat:
            self.geodata.set("geoip_dat", paths.geoip_dat, "geoip:CC from this file")

    def render(self) -> str:
        doc = Document(intro=list(self.intro))
        named = [("log", self.log), ("geodata", self.geodata)]
        for name, table in named:
            _place(doc, table, name)
        for inbound, sniffing in self.inbounds:
            _place(doc, inbound, "inbounds", array=True)
            if sniffing is not None:
                _place(doc, sniffing, "inbounds", "sniffing")
        for i, outbound in enumerate(self.outbounds):
            placed = _place(doc, outbound, "outbounds", array=True)
            if i == 0:
                placed.comments = [*placed.comments, _DEFAULT_NOTE]
        _place(doc, self.routing, "routing")
        for rule in self.rules:
            _place(doc, rule, "routing", "rules", array=True)
        _place(doc, self.dns, "dns")
        _place(doc, self.dns_hosts, "dns", "hosts")
        for server in self.dns_servers:
            _place(doc, server, "dns", "servers", array=True)
        for name, table in (("policy", self.policy), ("firewall", self.firewall),
                            ("api", self.api)):  # fmt: skip
            _place(doc, table, name)
        return doc.render()


_DEFAULT_NOTE = "The first outbound is the default: flows no rule matches go here."


def _place(doc: Document, table: Table, *parts: str, array: bool = False) -> Table:
    placed = doc.table(*parts, array=array)
    placed.comments = table.comments
    placed.entries = table.entries
    return placed


# --- values the two formats share --------------------------------------------------


def host_port(host: str, port: int) -> str:
    """``host:port`` as the config writes it (IPv6 in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def normalise_cidr(text: str) -> str | None:
    """An IP or CIDR as a network (host bits cleared, as v2ray and mihomo do when they
    read ``10.0.0.1/8``); None when it is neither."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        return None
    if net.prefixlen == net.max_prefixlen and "/" not in text:
        return str(net.network_address)
    return str(net)


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def checked_entries(node: Node, key: str, entries: list[str]) -> list[str]:
    """The routing domain entries of list ``key`` that `check` accepts; the others are
    reported (path and why) and left out."""
    kept = []
    for i, entry in enumerate(entries):
        try:
            kept.append(check_domain_entry(entry))
        except BadValue as exc:
            node.report.omit(f"{node.at(key)}[{i}]", f"{exc}; entry dropped")
    return kept


def checked_dns_address(address: str) -> str:
    """``address`` if `check` accepts it as a DNS server, else BadValue."""
    try:
        parse_dns_address(address)
    except ValueError as exc:  # BadValue, and what urlsplit raises for "[x]" hosts
        raise BadValue(str(exc)) from None
    return address


_HOST_NAME = re.compile(r"[A-Za-z0-9.-]+")


def host_values(values: object) -> bool:
    """A non-empty list of IP addresses and host names (a hosts entry's value)."""
    return (
        isinstance(values, list)
        and bool(values)
        and all(isinstance(v, str) and (is_ip(v) or _HOST_NAME.fullmatch(v)) for v in values)
    )


def unique_tag(wanted: str, taken: set[str]) -> str:
    tag, n = wanted, 2
    while tag in taken:
        tag, n = f"{wanted}-{n}", n + 1
    taken.add(tag)
    return tag


_KEY_ORDER = ("tag", "type", "listen", "server", "method", "username", "password", "sni",
              "alpn", "insecure", "outbounds", "url", "interval", "timeout", "tolerance",
              "domain_strategy", "response", "port", "network", "mark")  # fmt: skip


def order_keys(table: Table) -> None:
    """The keys of an inbound/outbound in the order conf/main.toml writes them."""
    rank = {name: i for i, name in enumerate(_KEY_ORDER)}
    table.entries.sort(key=lambda entry: rank.get(entry[0], len(rank)))
