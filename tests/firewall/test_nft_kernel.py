"""The generated rulesets against the real kernel, in throwaway namespaces."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netlab import Netns
from trio_tproxy.firewall import (
    RESERVED_V4,
    RESERVED_V6,
    DiversionPlan,
    render_ip_rules,
    render_ip_rules_removal,
    render_nft,
    render_nft_removal,
)

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
    "local-fail-closed": DiversionPlan(
        tproxy_port=12345,
        bypass_v4=RESERVED_V4,
        bypass_v6=RESERVED_V6,
        lan_interfaces=("br-lan",),
        local=True,
        skip_users=("nobody", "0"),
        fail_closed=True,
        proxy_marks=(2, 255),
    ),
    "ipv4-only-addresses": DiversionPlan(
        tproxy_port=7892,
        udp_port=7893,
        tcp_address="127.0.0.1",
        udp_address="0.0.0.0",
        bypass_v4=("192.168.0.0/16",),
        bypass_v6=(),
        ipv6=False,
        fail_closed=True,
        table="trio-tproxy",
    ),
    "redirect-local": DiversionPlan(
        tproxy_port=12345,
        tproxy_tcp=False,
        redirect_port=12346,
        bypass_v4=(),
        bypass_v6=(),
        local=True,
        proxy_marks=(),
        skip_users=("nobody",),
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
        "fib daddr type { local, broadcast, multicast } return",
        "ip daddr @bypass4 return",
        "ip6 daddr @bypass6 return",
        "meta l4proto { tcp, udp } socket transparent 1 meta mark set 0x00000001 accept",
        'iifname { "br-lan", "wlan*" } jump divert',
    ]


NAMES = st.from_regex(r"[A-Za-z0-9_.:@+-]{1,14}\*?", fullmatch=True)
USERS = st.one_of(st.sampled_from(["root", "nobody", "0", "65534", "4000000000"]))
PLANS_STRATEGY = st.builds(
    DiversionPlan,
    tproxy_port=st.one_of(st.none(), st.integers(1, 65535)),
    bypass_v4=st.lists(st.ip_addresses(v=4).map(lambda a: f"{a}/32"), max_size=5),
    bypass_v6=st.lists(st.ip_addresses(v=6).map(lambda a: f"{a}/128"), max_size=5),
    table=st.from_regex(r"[A-Za-z_][A-Za-z0-9_-]{0,20}", fullmatch=True),
    tproxy_tcp=st.booleans(),
    tproxy_udp=st.booleans(),
    udp_port=st.one_of(st.none(), st.integers(1, 65535)),
    tcp_address=st.one_of(st.none(), st.sampled_from(["127.0.0.1", "0.0.0.0", "::1"])),
    fwmark=st.integers(1, 0x7F),
    route_table=st.integers(1, 252),
    proxy_marks=st.lists(st.integers(0x80, 0xFFFFFFFF), max_size=3).map(tuple),
    lan_interfaces=st.lists(NAMES, max_size=3, unique=True).map(tuple),
    local=st.booleans(),
    skip_users=st.lists(USERS, max_size=2, unique=True).map(tuple),
    fail_closed=st.booleans(),
    ipv6=st.booleans(),
    priority_mangle=st.integers(-400, 400),
)


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(data=st.data())
def test_any_valid_plan_is_a_ruleset_nft_accepts(scratch_ns: Netns, data: st.DataObject) -> None:
    try:
        plan = data.draw(PLANS_STRATEGY)
    except ValueError:  # a combination the plan refuses (e.g. local without marks)
        return
    scratch_ns.run(["nft", "-c", "-f", "-"], input=render_nft(plan))
