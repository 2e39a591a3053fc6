"""``trio-tproxy match``: why a flow goes where it goes, as text or as a JSON object."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs

from ..addr import IPAddress
from .engine import Router
from .facts import FlowFacts
from .rules import Decision, NeedIps

__all__ = ["Explanation", "explain", "render_json", "render_text"]


@attrs.frozen
class Explanation:
    facts: FlowFacts
    decision: Decision
    rule_text: str | None  # None: the default outbound
    reasons: tuple[str, ...]  # one per condition of the matching rule
    resolved: tuple[IPAddress, ...] | None  # what ip rules saw for a domain target
    notes: tuple[str, ...] = ()


def explain(
    router: Router, facts: FlowFacts, resolved: Sequence[IPAddress] | None = None
) -> Explanation:
    notes: list[str] = []
    found = router.evaluate(facts, resolved)
    if isinstance(found, NeedIps):
        notes.append(
            f"domain_strategy {router.domain_strategy} would resolve {found.domain}; "
            "explained without its addresses (use --resolve to look them up)"
        )
        found = router.evaluate(facts, ())
        assert not isinstance(found, NeedIps)
    rule, ips = found
    seen = ips if facts.dst_ip is None and resolved is not None else None
    if rule is None:
        return Explanation(
            facts,
            Decision(router.default_outbound, None),
            None,
            ("no rule matched: the first outbound is the default",),
            seen,
            tuple(notes),
        )
    reasons = tuple(c.explain(facts, ips) for c in rule.conditions)
    return Explanation(
        facts, Decision(rule.outbound, rule.index), str(rule), reasons, seen, tuple(notes)
    )


def _describe(facts: FlowFacts) -> str:
    parts = [f"{facts.network} port {facts.dst_port}"]
    if facts.domain is not None and facts.dst_ip is not None:
        parts.append(f"address {facts.dst_ip}")
    if facts.protocol:
        parts.append(f"protocol {facts.protocol}")
    if facts.src_ip is not None:
        parts.append(f"from {facts.src_ip}")
    if facts.inbound_tag:
        parts.append(f"inbound {facts.inbound_tag}")
    return f"{facts.target} ({', '.join(parts)})"


def render_text(expl: Explanation) -> str:
    lines = [
        f"target:   {_describe(expl.facts)}",
        f"outbound: {expl.decision.outbound}",
        f"rule:     {expl.rule_text if expl.rule_text is not None else 'default'}",
    ]
    if expl.resolved is not None:
        shown = ", ".join(map(str, expl.resolved)) or "(resolution failed)"
        lines.append(f"resolved: {shown}")
    lines.append("because:")
    lines.extend(f"  {reason}" for reason in expl.reasons)
    lines.extend(f"note: {note}" for note in expl.notes)
    return "\n".join(lines)


def render_json(expl: Explanation) -> dict[str, Any]:
    facts = expl.facts
    return {
        "target": facts.target,
        "outbound": expl.decision.outbound,
        "rule": expl.decision.rule_index,
        "rule_text": expl.rule_text,
        "reasons": list(expl.reasons),
        "resolved": None if expl.resolved is None else [str(ip) for ip in expl.resolved],
        "notes": list(expl.notes),
        "facts": {
            "network": facts.network,
            "domain": facts.domain,
            "dst_ip": None if facts.dst_ip is None else str(facts.dst_ip),
            "dst_port": facts.dst_port,
            "src_ip": None if facts.src_ip is None else str(facts.src_ip),
            "src_port": facts.src_port,
            "inbound_tag": facts.inbound_tag,
            "protocol": facts.protocol,
        },
    }
