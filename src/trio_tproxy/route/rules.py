"""Compiled rules and the engine's two answers: a :class:`Decision` or :class:`NeedIps`."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from ..addr import IPAddress
from .conditions import Condition, DomainCondition
from .facts import FlowFacts

__all__ = ["Decision", "Ips", "NeedIps", "Rule"]

Ips = tuple[IPAddress, ...]


@attrs.frozen
class Rule:
    index: int
    outbound: str
    conditions: tuple[Condition, ...]
    has_ip: bool = attrs.field(init=False)
    # The hot path: the rule's domain group bit (0 = no domain condition) is tested
    # inline against the flow's domain mask; the other conditions' bound ``test``.
    domain_bit: int = attrs.field(init=False)
    tests: tuple[Callable[[FlowFacts, Ips | None, int], bool], ...] = attrs.field(init=False)

    @domain_bit.default
    def _domain_bit(self) -> int:
        return next((c.matcher.bit for c in self.conditions if isinstance(c, DomainCondition)), 0)

    @tests.default
    def _tests(self) -> tuple[Callable[[FlowFacts, Ips | None, int], bool], ...]:
        return tuple(c.test for c in self.conditions if not isinstance(c, DomainCondition))

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
