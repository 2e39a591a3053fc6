"""The rule engine: first matching rule wins, no match -> the first outbound.

Pure and synchronous. When ``routing.domain_strategy`` needs a domain's addresses and the
caller has not supplied them, :meth:`Router.decide` returns :class:`NeedIps`; the caller
resolves (through the built-in DNS) and calls again with ``resolved`` (``()`` when
resolution failed: ip conditions are then false, as in v2ray). The engine keeps no
state between calls (reference section 3, ``pickRouteInternal``):

* ``as_is``: ip conditions never see a domain target's addresses;
* ``ip_if_non_match``: pass 1 over all rules without addresses; if nothing matched, the
  domain's addresses are needed and pass 2 runs over *all* rules with ip conditions
  seeing them (any matching address is enough);
* ``ip_on_demand``: one pass; the addresses are needed the first time an ip condition
  is reached on a domain target (ip conditions come last in a rule, so a rule whose
  other conditions fail never asks).

A flow with ``dst_ip`` set (an IP target, or route-only sniffing) never needs resolving.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..addr import IPAddress, unmap
from .conditions import Unresolved
from .domain import DomainIndex
from .facts import FlowFacts
from .rules import Decision, Ips, NeedIps, Rule

__all__ = ["Decision", "NeedIps", "Router", "Rule"]

_Test = Callable[[FlowFacts, Ips | None, int], bool]
_PlanEntry = tuple[int, tuple[_Test, ...], Rule, Decision, bool]  # see Router.__init__


class Router:
    def __init__(
        self,
        rules: tuple[Rule, ...],
        default_outbound: str,
        domain_strategy: str,
        domains: DomainIndex,
    ) -> None:
        self.rules = rules
        self.default_outbound = default_outbound
        self.domain_strategy = domain_strategy
        self.domains = domains
        self._default = Decision(default_outbound, None)
        self._decisions = {r.index: Decision(r.outbound, r.index) for r in rules}
        self._has_ip_rules = any(r.has_ip for r in rules)
        # The hot loop's view of the rules: (domain group bit or 0, other tests, rule, its
        # decision, has an ip condition), and the index's mask function (and its cache).
        self._plan = tuple(
            (r.domain_bit, r.tests, r, self._decisions[r.index], r.has_ip) for r in rules
        )
        self._domain_mask = domains.mask
        # Domain targets whose decision needs no addresses: one pass, no bookkeeping.
        self._one_pass = domain_strategy == "as_is" or not self._has_ip_rules
        # Then, if every rule is domain-only or has an ip condition (false without
        # addresses), the first matching rule is the lowest domain group bit set: the
        # index only computes bits below the first decisive match (see DomainIndex).
        self._by_bit: dict[int, Decision] | None = None
        bits = [r.domain_bit for r in rules if not r.has_ip]
        if (
            self._one_pass
            and all(r.has_ip or (r.domain_bit and not r.tests) for r in rules)
            and bits == sorted(set(bits))  # one group per rule, in rule order (compile.py)
        ):
            self._by_bit = {r.domain_bit: self._decisions[r.index] for r in rules if not r.has_ip}
            self._rule_bits = sum(bits)

    def decide(
        self, facts: FlowFacts, resolved: Sequence[IPAddress] | None = None
    ) -> Decision | NeedIps:
        if facts.dst_ip is not None:  # the common cases, without evaluate()'s bookkeeping
            entry = self._first(facts, (facts.dst_ip,))
        elif (by_bit := self._by_bit) is not None:
            hit = self._domain_mask(facts.domain) & self._rule_bits  # type: ignore[arg-type]
            return by_bit[hit & -hit] if hit else self._default
        elif self._one_pass:
            entry = self._first(facts, ())
        else:
            found = self.evaluate(facts, resolved)
            if isinstance(found, NeedIps):
                return found
            return self._default if found[0] is None else self._decisions[found[0].index]
        return self._default if entry is None else entry[3]

    def evaluate(
        self, facts: FlowFacts, resolved: Sequence[IPAddress] | None = None
    ) -> tuple[Rule | None, Ips] | NeedIps:
        """The matching rule (None = default) and the addresses its ip conditions saw."""
        if facts.dst_ip is not None:
            ips: Ips = (facts.dst_ip,)
            return self._first_rule(facts, ips), ips
        domain = facts.domain
        assert domain is not None  # FlowFacts guarantees one of the two
        strategy = self.domain_strategy
        if strategy == "as_is" or not self._has_ip_rules:
            return self._first_rule(facts, ()), ()
        seen = None if resolved is None else tuple(unmap(ip) for ip in resolved)
        if strategy == "ip_on_demand":
            try:
                return self._first_rule(facts, seen), seen or ()
            except Unresolved:
                return NeedIps(domain)
        rule = self._first_rule(facts, ())  # ip_if_non_match, pass 1
        if rule is not None:
            return rule, ()
        if seen is None:
            return NeedIps(domain)
        return self._first_rule(facts, seen), seen

    def _first_rule(self, facts: FlowFacts, ips: Ips | None) -> Rule | None:
        entry = self._first(facts, ips)
        return None if entry is None else entry[2]

    def _first(self, facts: FlowFacts, ips: Ips | None) -> _PlanEntry | None:
        mask = -1
        no_ips = ips == ()  # an ip condition is false: skip its rule without calling it
        for entry in self._plan:
            if no_ips and entry[4]:
                continue
            bit = entry[0]
            if bit:
                if mask < 0:
                    domain = facts.domain
                    mask = 0 if domain is None else self._domain_mask(domain)
                if not mask & bit:
                    continue
            for test in entry[1]:
                if not test(facts, ips, mask):
                    break
            else:
                return entry
        return None
