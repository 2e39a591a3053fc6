"""The generated rulesets against the real kernel, in throwaway namespaces."""

from __future__ import annotations

import pytest

from trio_tproxy.firewall import (
    RESERVED_V4,
    RESERVED_V6,
    DiversionPlan,
    render_ip_rules,
    render_ip_rules_removal,
    render_nft,
    render_nft_removal,
)
from trio_tproxy.netlab import Netns

pytestmark = pytest.mark.netns

PLANS = {
    "reserved-any-iface": DiversionPlan(
        tproxy_port=12345, bypass_v4=RESERVED_V4, bypass_v6=RESERVED_V6
    ),
    "lan-interfaces": DiversionPlan(
        tproxy_port=12345,
        bypass_v4=RESERVED_V4,
        bypass_v6=RESERVED_V6,
        lan_interfaces=("br-lan", "wlan*"),
    ),
    "no-bypass": DiversionPlan(tproxy_port=1, bypass_v4=(), bypass_v6=()),
    # Overlapping ranges: auto-merge must accept them.
    "overlapping-bypass": DiversionPlan(
        tproxy_port=1,
        bypass_v4=("10.0.0.0/8", "10.1.0.0/16", "1.2.3.4/32"),
        bypass_v6=("2001:db8::/32", "2001:db8:1::/48"),
    ),
    "redirect-only": DiversionPlan(
        tproxy_port=None, redirect_port=12346, bypass_v4=RESERVED_V4, bypass_v6=()
    ),
    "udp-tproxy-tcp-redirect": DiversionPlan(
        tproxy_port=12345,
        tproxy_tcp=False,
        redirect_port=12346,
        bypass_v4=(),
        bypass_v6=RESERVED_V6,
        lan_interfaces=("lan0",),
        table="other",
        priority_mangle=-140,
    ),
}


def _apply(netns: Netns, plan: DiversionPlan) -> None:
    netns.run(["nft", "-f", "-"], input=render_nft(plan))
    for argv in render_ip_rules_removal(plan):
        netns.run(argv, check=False)
    for argv in render_ip_rules(plan):
        netns.run(argv)


def _ruleset(netns: Netns) -> str:
    return netns.run(["nft", "list", "ruleset"]).stdout


def _policy(netns: Netns) -> str:
    # One exec instead of four: each `ip netns exec` costs ~10 ms.
    script = "ip -4 rule; ip -6 rule; ip -4 route show table all; ip -6 route show table all"
    return netns.run(["sh", "-c", script]).stdout


@pytest.mark.parametrize("name", list(PLANS))
def test_ruleset_passes_nft_check(scratch_ns: Netns, name: str) -> None:
    scratch_ns.run(["nft", "-c", "-f", "-"], input=render_nft(PLANS[name]))


@pytest.mark.parametrize("name", list(PLANS))
def test_apply_twice_is_idempotent_and_removal_leaves_nothing(scratch_ns: Netns, name: str) -> None:
    plan = PLANS[name]
    policy_before = _policy(scratch_ns)
    _apply(scratch_ns, plan)
    once = (_ruleset(scratch_ns), _policy(scratch_ns))
    _apply(scratch_ns, plan)
    assert (_ruleset(scratch_ns), _policy(scratch_ns)) == once
    assert f"table inet {plan.table} {{" in once[0]

    scratch_ns.run(["nft", "-f", "-"], input=render_nft_removal(plan))
    for argv in render_ip_rules_removal(plan):
        scratch_ns.run(argv)  # each one must find what apply added
    assert _ruleset(scratch_ns) == ""
    assert _policy(scratch_ns) == policy_before
    # Removing again is harmless for the table.
    scratch_ns.run(["nft", "-f", "-"], input=render_nft_removal(plan))


def test_reapply_replaces_the_previous_table(scratch_ns: Netns) -> None:
    first = PLANS["lan-interfaces"]
    second = DiversionPlan(tproxy_port=999, bypass_v4=("10.0.0.0/8",), bypass_v6=())
    scratch_ns.run(["nft", "-f", "-"], input=render_nft(first))
    scratch_ns.run(["nft", "-f", "-"], input=render_nft(second))
    listed = _ruleset(scratch_ns)
    assert "tproxy to :999" in listed
    assert "12345" not in listed
    assert "br-lan" not in listed
    assert "192.168.0.0/16" not in listed


def test_listed_ruleset_keeps_the_rule_order(scratch_ns: Netns) -> None:
    scratch_ns.run(["nft", "-f", "-"], input=render_nft(PLANS["lan-interfaces"]))
    listed = scratch_ns.run(["nft", "list", "chain", "inet", "trio_tproxy", "prerouting"]).stdout
    # table {, chain {, type ... hook line, RULES, }, }
    rules = [line.strip() for line in listed.splitlines()[3:-2]]
    assert rules == [
        "meta mark 0x000000ff return",
        "fib daddr type local return",
        "ip daddr @bypass4 return",
        "ip6 daddr @bypass6 return",
        "meta l4proto { tcp, udp } socket transparent 1 meta mark set 0x00000001 accept",
        'iifname { "br-lan", "wlan*" } jump divert',
    ]
