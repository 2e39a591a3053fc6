"""Compiled rules and the engine's two answers: a :class:`Decision` or :class:`NeedIps`."""

from __future__ import annotations

import attrs

from .conditions import Condition, DomainCondition
from .ipset import IPAddress

__all__ = ["Decision", "Ips", "NeedIps", "Rule"]

Ips = tuple[IPAddress, ...]


@attrs.frozen
class Rule:
    index: int
    outbound: str
    conditions: tuple[Condition, ...]
    has_domain: bool = attrs.field(init=False)
    has_ip: bool = attrs.field(init=False)

    @has_domain.default
    def _has_domain(self) -> bool:
        return any(isinstance(c, DomainCondition) for c in self.conditions)

    @has_ip.default
    def _has_ip(self) -> bool:
        return any(c.checks_ips for c in self.conditions)

    def __str__(self) -> str:
        return f"rule[{self.index}] " + " ".join(map(str, self.conditions)) + f" => {self.outbound}"


@attrs.frozen
class Decision:
    outbound: str
    rule_index: int | None  # None: no rule matched, the default (first) outbound

    def __str__(self) -> str:
        where = "default" if self.rule_index is None else f"rule[{self.rule_index}]"
        return f"{where} => {self.outbound}"


@attrs.frozen
class NeedIps:
    """Resolve ``domain`` and call ``decide`` again with its addresses (``()`` on failure)."""

    domain: str

    def __str__(self) -> str:
        return f"need the addresses of {self.domain}"
