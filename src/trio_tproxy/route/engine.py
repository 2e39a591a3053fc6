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

from collections.abc import Sequence

from .conditions import Unresolved
from .domain import DomainIndex
from .explain import Explanation, explain
from .facts import FlowFacts
from .ipset import IPAddress, unmap
from .rules import Decision, Ips, NeedIps, Rule

__all__ = ["Decision", "NeedIps", "Router", "Rule"]


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

    def decide(
        self, facts: FlowFacts, resolved: Sequence[IPAddress] | None = None
    ) -> Decision | NeedIps:
        if facts.dst_ip is not None:  # the common case, without evaluate()'s bookkeeping
            rule = self._first(facts, (facts.dst_ip,))
        else:
            found = self.evaluate(facts, resolved)
            if isinstance(found, NeedIps):
                return found
            rule = found[0]
        return self._default if rule is None else self._decisions[rule.index]

    def evaluate(
        self, facts: FlowFacts, resolved: Sequence[IPAddress] | None = None
    ) -> tuple[Rule | None, Ips] | NeedIps:
        """The matching rule (None = default) and the addresses its ip conditions saw."""
        if facts.dst_ip is not None:
            ips: Ips = (facts.dst_ip,)
            return self._first(facts, ips), ips
        domain = facts.domain
        assert domain is not None  # FlowFacts guarantees one of the two
        strategy = self.domain_strategy
        if strategy == "as_is" or not self._has_ip_rules:
            return self._first(facts, ()), ()
        seen = None if resolved is None else tuple(unmap(ip) for ip in resolved)
        if strategy == "ip_on_demand":
            try:
                return self._first(facts, seen), seen or ()
            except Unresolved:
                return NeedIps(domain)
        rule = self._first(facts, ())  # ip_if_non_match, pass 1
        if rule is not None:
            return rule, ()
        if seen is None:
            return NeedIps(domain)
        return self._first(facts, seen), seen

    def _first(self, facts: FlowFacts, ips: Ips | None) -> Rule | None:
        domain = facts.domain
        mask = -1
        for rule in self.rules:
            bit = rule.domain_bit
            if bit:
                if mask < 0:
                    mask = 0 if domain is None else self.domains.mask(domain)
                if not mask & bit:
                    continue
            for test in rule.tests:
                if not test(facts, ips, mask):
                    break
            else:
                return rule
        return None

    def explain(self, facts: FlowFacts, resolved: Sequence[IPAddress] | None = None) -> Explanation:
        """Why ``decide`` decides what it does; never returns NeedIps (without addresses,
        it explains the decision as if resolution had failed, and says so)."""
        return explain(self, facts, resolved)
