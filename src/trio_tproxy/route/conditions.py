"""One small class per rule field: ``test`` on the hot path, ``explain`` for ``match``.

``test(facts, ips, domain_mask)`` gets the addresses ``ip`` rules may see (``ips``;
``None`` means "the domain has not been resolved yet": only :class:`IpCondition` cares,
by raising :class:`Unresolved`) and the bit mask of matching domain groups from the
router's shared :class:`~.domain.DomainIndex`. ``explain`` returns the reason a
matching condition matched, e.g. ``port 443 in 80,443``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

from ..addr import IPAddress
from ..config.values import PortRanges
from .domain import DomainMatcher
from .facts import FlowFacts
from .ipset import IpSet

__all__ = [
    "Condition", "DomainCondition", "InboundTagCondition", "IpCondition", "NetworkCondition",
    "PortCondition", "ProtocolCondition", "SourceCondition", "Unresolved",
]  # fmt: skip

Ips = tuple[IPAddress, ...] | None


class Unresolved(Exception):
    """An ip condition met a domain target whose addresses nobody has looked up yet."""


def _list(values: Sequence[str]) -> str:
    return values[0] if len(values) == 1 else "[" + ", ".join(values) + "]"


def _entry(entry: str, origins: Mapping[str, str]) -> str:
    """An ip entry and, for a list read from a .dat, which list of which file."""
    origin = origins.get(entry)
    return entry if origin is None else f"{entry} ({origin})"


@attrs.frozen
class DomainCondition:
    matcher: DomainMatcher
    checks_ips = False

    def test(self, facts: FlowFacts, ips: Ips, domain_mask: int) -> bool:
        return bool(domain_mask & self.matcher.bit)

    def explain(self, facts: FlowFacts, ips: Ips) -> str:
        assert facts.domain is not None
        return f'domain "{facts.domain}" matched {self.matcher.best(facts.domain)}'

    def __str__(self) -> str:
        return f"domain={_list(self.matcher.entries)}"


@attrs.frozen
class IpCondition:
    """Destination addresses: the flow's IP, or the domain's addresses once resolved."""

    merged: IpSet
    parts: tuple[tuple[str, IpSet], ...]  # per configuration entry, for explanations
    origins: Mapping[str, str] = attrs.field(factory=dict)  # entry -> "list CN of geoip.dat"
    checks_ips = True

    def test(self, facts: FlowFacts, ips: Ips, domain_mask: int) -> bool:
        if ips is None:
            raise Unresolved
        for ip in ips:  # noqa: SIM110 - a loop: any() with a generator costs 0.5 us more
            if ip in self.merged:
                return True
        return False

    def explain(self, facts: FlowFacts, ips: Ips) -> str:
        for ip in ips or ():
            for entry, part in self.parts:
                if ip in part:
                    via = f" (resolved from {facts.domain})" if facts.dst_ip is None else ""
                    return f"ip {ip}{via} matched {_entry(entry, self.origins)}"
        return "ip matched"  # pragma: no cover - explain is only called after test

    def __str__(self) -> str:
        return f"ip={_list([e for e, _ in self.parts])}"


@attrs.frozen
class SourceCondition:
    merged: IpSet
    parts: tuple[tuple[str, IpSet], ...]
    origins: Mapping[str, str] = attrs.field(factory=dict)
    checks_ips = False

    def test(self, facts: FlowFacts, ips: Ips, domain_mask: int) -> bool:
        return facts.src_ip is not None and facts.src_ip in self.merged

    def explain(self, facts: FlowFacts, ips: Ips) -> str:
        entry = next((e for e, part in self.parts if facts.src_ip in part), "?")
        return f"source {facts.src_ip} matched {_entry(entry, self.origins)}"

    def __str__(self) -> str:
        return f"source={_list([e for e, _ in self.parts])}"


@attrs.frozen
class PortCondition:
    ports: PortRanges
    field: str = "port"  # or "source_port"
    checks_ips = False

    def _port(self, facts: FlowFacts) -> int:
        return facts.dst_port if self.field == "port" else facts.src_port

    def test(self, facts: FlowFacts, ips: Ips, domain_mask: int) -> bool:
        port = facts.dst_port if self.field == "port" else facts.src_port
        return any(lo <= port <= hi for lo, hi in self.ports.ranges)

    def explain(self, facts: FlowFacts, ips: Ips) -> str:
        return f"{self.field} {self._port(facts)} in {self.ports}"

    def __str__(self) -> str:
        return f"{self.field}={self.ports}"


@attrs.frozen
class NetworkCondition:
    networks: frozenset[str]
    checks_ips = False

    def test(self, facts: FlowFacts, ips: Ips, domain_mask: int) -> bool:
        return facts.network in self.networks

    def explain(self, facts: FlowFacts, ips: Ips) -> str:
        return f"network {facts.network} in {_list(sorted(self.networks))}"

    def __str__(self) -> str:
        return f"network={_list(sorted(self.networks))}"


@attrs.frozen
class InboundTagCondition:
    tags: tuple[str, ...]
    checks_ips = False

    def test(self, facts: FlowFacts, ips: Ips, domain_mask: int) -> bool:
        return facts.inbound_tag in self.tags

    def explain(self, facts: FlowFacts, ips: Ips) -> str:
        return f'inbound_tag "{facts.inbound_tag}" in {_list(self.tags)}'

    def __str__(self) -> str:
        return f"inbound_tag={_list(self.tags)}"


@attrs.frozen
class ProtocolCondition:
    """v2ray matches the sniffed protocol by prefix: ``http`` matches ``http1``."""

    prefixes: tuple[str, ...]
    checks_ips = False

    def test(self, facts: FlowFacts, ips: Ips, domain_mask: int) -> bool:
        return facts.protocol is not None and facts.protocol.startswith(self.prefixes)

    def explain(self, facts: FlowFacts, ips: Ips) -> str:
        assert facts.protocol is not None
        prefix = next(p for p in self.prefixes if facts.protocol.startswith(p))
        return f'protocol "{facts.protocol}" matched "{prefix}"'

    def __str__(self) -> str:
        return f"protocol={_list(self.prefixes)}"


Condition = (
    DomainCondition | IpCondition | SourceCondition | PortCondition | NetworkCondition
    | InboundTagCondition | ProtocolCondition
)  # fmt: skip
