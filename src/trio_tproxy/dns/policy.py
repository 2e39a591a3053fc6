"""Which upstream answers which name, and what ``hosts`` says first (pure).

The semantics are v2ray's DNS module (reference section 5):

* server order: the servers whose ``domains`` match the name, ranked by how they match
  (``full``, then ``domain:`` with the most specific suffix first, then ``keyword``,
  then ``regexp``; config order among equals; each server once), then the fallback
  servers in config order, without ``skip_fallback`` ones, and none at all under
  ``disable_fallback``. The caller moves down the list only on a timeout or an
  ``expect_ips`` mismatch;
* ``hosts``: a bare key is a full match (unlike routing, where it is a substring);
  ``domain:``, ``full:``, ``keyword:``, ``regexp:``, ``dotless:``, ``geosite:`` as in
  routing. The values of *every* matching key are merged in config order; a single name
  among them is an alias, looked up again (at most :data:`MAX_ALIAS_DEPTH` times), any
  other mix keeps only the addresses. A matching key with no address of the wanted
  family answers "no records" without asking a server.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

import attrs

from ..addr import IPAddress, unmap
from ..config.errors import ConfigError, ConfigErrors
from ..config.schema import DnsConfig
from ..geo import GeoData
from ..route import DomainMatcher, IpSet, build_domain_matcher, build_ip_set, normalize_domain
from .message import QTYPE_A, QTYPE_AAAA

__all__ = [
    "MAX_ALIAS_DEPTH", "HostsAnswer", "HostsTable", "ServerPlan", "build_hosts",
    "compile_servers", "filter_expected", "query_types", "select_servers",
]  # fmt: skip

# v2ray's hosts alias chain limit (app/dns/hosts.go maxDepth).
MAX_ALIAS_DEPTH = 5

QUERY_TYPES: Mapping[str, tuple[int, ...]] = {
    "use_ip": (QTYPE_A, QTYPE_AAAA),
    "use_ipv4": (QTYPE_A,),
    "use_ipv6": (QTYPE_AAAA,),
}


def query_types(strategy: str) -> tuple[int, ...]:
    """The record types ``query_strategy`` lets the splitter ask for."""
    return QUERY_TYPES[strategy]


@attrs.frozen
class ServerPlan:
    """What selection needs to know of one configured server."""

    index: int
    address: str
    domains: DomainMatcher | None
    expect_ips: IpSet | None
    skip_fallback: bool


def compile_servers(cfg: DnsConfig, geo: GeoData) -> tuple[ServerPlan, ...]:
    plans: list[ServerPlan] = []
    errors: list[ConfigError] = []
    for i, server in enumerate(cfg.servers):
        domains = expect = None
        try:
            if server.domains:
                domains = build_domain_matcher(server.domains, geo, f"$.dns.servers[{i}].domains")
        except ConfigErrors as exc:
            errors += exc.errors
        try:
            if server.expect_ips:
                expect = build_ip_set(server.expect_ips, geo, f"$.dns.servers[{i}].expect_ips")
        except ConfigErrors as exc:
            errors += exc.errors
        plans.append(ServerPlan(i, server.address, domains, expect, server.skip_fallback))
    if errors:
        raise ConfigErrors(errors)
    return tuple(plans)


def select_servers(
    name: str, servers: Sequence[ServerPlan], *, disable_fallback: bool = False
) -> tuple[int, ...]:
    """Indexes of the servers to ask for ``name``, in order."""
    ranked: list[tuple[tuple[int, int], int]] = []
    for server in servers:
        if server.domains is not None and server.domains.matches(name):
            best = server.domains.best(name)
            if best is not None:
                ranked.append((best.rank, server.index))
    ranked.sort()
    chosen = [index for _, index in ranked]
    if not disable_fallback:
        taken = set(chosen)
        chosen += [s.index for s in servers if not s.skip_fallback and s.index not in taken]
    return tuple(chosen)


def filter_expected(addresses: Sequence[IPAddress], expect: IpSet | None) -> tuple[IPAddress, ...]:
    """The answers ``expect_ips`` lets through (all of them when there is no such list)."""
    if expect is None:
        return tuple(addresses)
    return tuple(ip for ip in addresses if ip in expect)


@attrs.frozen
class _HostsValue:
    addresses: tuple[IPAddress, ...]
    names: tuple[str, ...]


@attrs.frozen
class HostsAnswer:
    """What hosts says about a name: ``addresses`` (possibly none of the wanted family),
    or, when ``addresses`` is None, ``name`` to ask the servers about instead."""

    name: str
    addresses: tuple[IPAddress, ...] | None


class HostsTable:
    def __init__(
        self,
        values: tuple[_HostsValue, ...],
        full: dict[str, tuple[int, ...]],
        matchers: tuple[tuple[int, DomainMatcher], ...],
    ) -> None:
        self._values = values
        self._full = full
        self._matchers = matchers

    def __bool__(self) -> bool:
        return bool(self._values)

    def _match(self, name: str) -> _HostsValue | None:
        hits = list(self._full.get(name, ()))
        hits += [key for key, matcher in self._matchers if matcher.matches(name)]
        if not hits:
            return None
        hits.sort()  # config order
        addresses = tuple(ip for key in hits for ip in self._values[key].addresses)
        names = tuple(n for key in hits for n in self._values[key].names)
        return _HostsValue(addresses, names)

    def lookup(self, name: str, qtype: int) -> HostsAnswer:
        """Follow aliases; ``addresses`` None means hosts has no answer for the family
        to give and ``name`` (the original or the last alias) goes to the servers."""
        for _ in range(MAX_ALIAS_DEPTH):
            value = self._match(name)
            if value is None:
                return HostsAnswer(name, None)
            if len(value.names) == 1 and not value.addresses:
                name = value.names[0]
                continue
            wanted = 4 if qtype == QTYPE_A else 6
            return HostsAnswer(name, tuple(ip for ip in value.addresses if ip.version == wanted))
        return HostsAnswer(name, None)


def _parse_value(values: Sequence[str]) -> _HostsValue:
    addresses: list[IPAddress] = []
    names: list[str] = []
    for text in values:
        try:
            addresses.append(unmap(ipaddress.ip_address(text)))
        except ValueError:
            names.append(normalize_domain(text))
    return _HostsValue(tuple(addresses), tuple(names))


def build_hosts(hosts: Mapping[str, Sequence[str]], geo: GeoData) -> HostsTable:
    """Compile ``dns.hosts``; raises ConfigErrors for bad keys (unknown geosite list...)."""
    values: list[_HostsValue] = []
    full: dict[str, list[int]] = {}
    matchers: list[tuple[int, DomainMatcher]] = []
    errors: list[ConfigError] = []
    for index, (key, value) in enumerate(hosts.items()):
        values.append(_parse_value(value))
        prefix, sep, rest = key.partition(":")
        if not sep or prefix.lower() == "full":
            full.setdefault(normalize_domain(rest if sep else key), []).append(index)
            continue
        try:
            # one entry per matcher: the path names the key, the value is what matches
            matcher = build_domain_matcher([key], geo, f"$.dns.hosts[{key!r}]")
        except ConfigErrors as exc:
            errors += [ConfigError(e.message, f"$.dns.hosts[{key!r}]") for e in exc.errors]
            continue
        matchers.append((index, matcher))
    if errors:
        raise ConfigErrors(errors)
    return HostsTable(tuple(values), {k: tuple(v) for k, v in full.items()}, tuple(matchers))
