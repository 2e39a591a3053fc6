"""The engine: conditions per field, first match, default outbound, domain strategies."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_tproxy.config import parse_config_text
from trio_tproxy.geo import GeoData
from trio_tproxy.route import Decision, FlowFacts, NeedIps, Router, compile_router, parse_target

MakeRouter = Callable[..., Router]


def flow(
    target: str,
    port: int = 443,
    network: str = "tcp",
    *,
    src: str | None = None,
    src_port: int = 0,
    inbound: str = "tproxy-in",
    protocol: str | None = None,
    route_only_ip: str | None = None,
) -> FlowFacts:
    ip, domain = parse_target(target)
    if route_only_ip is not None:
        ip = ip_address(route_only_ip)
    return FlowFacts(
        network,  # type: ignore[arg-type]
        ip,
        port,
        domain=domain,
        src_ip=None if src is None else ip_address(src),
        src_port=src_port,
        inbound_tag=inbound,
        protocol=protocol,
    )


def outcome(router: Router, facts: FlowFacts, resolved: list[str] | None = None) -> object:
    result = router.decide(facts, None if resolved is None else [ip_address(a) for a in resolved])
    if isinstance(result, NeedIps):
        return "need-ips"
    return result.rule_index


# (rule fields in TOML, flow, matches?)
CONDITIONS = [
    ('port = "53"', flow("1.2.3.4", 53), True),
    ('port = "53"', flow("1.2.3.4", 54), False),
    ('port = "1000-2000"', flow("1.2.3.4", 999), False),
    ('port = "1000-2000"', flow("1.2.3.4", 1000), True),
    ('port = "1000-2000"', flow("1.2.3.4", 2000), True),
    ('port = "1000-2000"', flow("1.2.3.4", 2001), False),
    ('port = "53,443,1000-2000"', flow("x.com", 443), True),
    ("port = 0", flow("1.2.3.4", 0), True),
    ('port = "65535"', flow("1.2.3.4", 65535), True),
    ('source_port = "5000-5001"', flow("1.2.3.4", src_port=5001), True),
    ('source_port = "5000-5001"', flow("1.2.3.4", src_port=4999), False),
    ('network = "udp"', flow("1.2.3.4", network="udp"), True),
    ('network = "udp"', flow("1.2.3.4", network="tcp"), False),
    ('network = "tcp,udp"', flow("1.2.3.4", network="tcp"), True),
    ('inbound_tag = ["tproxy-in"]', flow("1.2.3.4"), True),
    ('inbound_tag = ["dns"]', flow("1.2.3.4"), False),
    ('protocol = ["http"]', flow("x.com", protocol="http1"), True),
    ('protocol = ["http"]', flow("x.com", protocol="tls"), False),
    ('protocol = ["tls", "quic"]', flow("x.com", protocol="quic"), True),
    ('protocol = ["bittorrent"]', flow("1.2.3.4"), False),  # not sniffed
    ('source = ["192.168.1.0/24"]', flow("1.2.3.4", src="192.168.1.50"), True),
    ('source = ["192.168.1.0/24"]', flow("1.2.3.4", src="::ffff:192.168.1.50"), True),
    ('source = ["192.168.1.0/24"]', flow("1.2.3.4", src="192.168.2.1"), False),
    ('source = ["192.168.1.0/24"]', flow("1.2.3.4"), False),  # unknown source
    ('source = ["geoip:private"]', flow("1.2.3.4", src="fe80::1"), True),
    ('ip = ["10.0.0.0/8"]', flow("10.1.2.3"), True),
    ('ip = ["10.0.0.0/8"]', flow("::ffff:10.1.2.3"), True),  # dual-stack socket view
    ('ip = ["10.0.0.0/8"]', flow("11.0.0.0"), False),
    ('ip = ["10.0.0.0/8"]', flow("x.com"), False),  # a domain target has no address
    ('ip = ["203.0.113.7"]', flow("203.0.113.7"), True),
    ('ip = ["2001:db8::/32"]', flow("[2001:db8::1]"), True),
    ('ip = ["geoip:private"]', flow("192.168.0.1"), True),
    ('ip = ["geoip:private"]', flow("100.64.0.1"), True),
    ('ip = ["geoip:private"]', flow("8.8.8.8"), False),
    ('ip = ["geoip:private"]', flow("fd00::1"), True),
    ('ip = ["geoip:cn"]', flow("1.0.1.77"), True),
    ('ip = ["GEOIP:CN"]', flow("2400:3200::1"), True),
    ('ip = ["geoip:cn"]', flow("8.8.8.8"), False),
    ('ip = ["geoip:!cn"]', flow("8.8.8.8"), True),
    ('ip = ["geoip:!cn"]', flow("1.0.1.1"), False),
    ('ip = ["geoip:!cn"]', flow("2001:db8::1"), True),
    ('domain = ["domain:x.com"]', flow("WWW.X.COM."), True),
    ('domain = ["domain:x.com"]', flow("1.2.3.4"), False),  # never on an IP target
    ('domain = ["keyword:x"]', flow("1.2.3.4"), False),
    ('domain = ["geosite:cn"]', flow("www.baidu.com"), True),
    # fields AND, entries OR
    ('domain = ["a.com", "b.com"]\nport = "443"', flow("www.b.com", 443), True),
    ('domain = ["a.com", "b.com"]\nport = "443"', flow("www.b.com", 80), False),
    ('network = "udp"\nport = "53"', flow("1.2.3.4", 53, "tcp"), False),
]


@pytest.mark.parametrize(("fields", "facts", "matches"), CONDITIONS)
def test_conditions(make_router: MakeRouter, fields: str, facts: FlowFacts, matches: bool) -> None:
    router = make_router(f'[[routing.rules]]\n{fields}\noutbound = "proxy"\n')
    decision = router.decide(facts)
    assert isinstance(decision, Decision)
    assert decision == (Decision("proxy", 0) if matches else Decision("direct", None))


RULES = """
[[routing.rules]]
domain = ["geosite:ads"]
outbound = "block"
[[routing.rules]]
inbound_tag = ["tproxy-in"]
network = "udp"
port = "53"
outbound = "dns-out"
[[routing.rules]]
domain = ["geosite:cn"]
outbound = "direct"
[[routing.rules]]
ip = ["geoip:private", "geoip:cn"]
outbound = "direct"
[[routing.rules]]
domain = ["domain:google.com"]
outbound = "proxy"
"""


def test_first_match_wins_and_default(make_router: MakeRouter) -> None:
    router = make_router(RULES)
    assert router.decide(flow("ad.example.com")) == Decision("block", 0)
    assert router.decide(flow("doubleclick.net", 53, "udp")) == Decision("block", 0)
    assert router.decide(flow("8.8.8.8", 53, "udp")) == Decision("dns-out", 1)
    assert router.decide(flow("www.google.cn")) == Decision("direct", 2)
    assert router.decide(flow("1.0.1.1")) == Decision("direct", 3)
    assert router.decide(flow("www.google.com")) == Decision("proxy", 4)
    assert router.decide(flow("8.8.8.8")) == Decision("direct", None)  # the first outbound
    assert str(router.decide(flow("8.8.8.8"))) == "default => direct"
    assert str(router.decide(flow("www.google.com"))) == "rule[4] => proxy"
    assert str(router.rules[1]) == ("rule[1] network=udp port=53 inbound_tag=tproxy-in => dns-out")


STRATEGY_RULES = """
[[routing.rules]]
domain = ["domain:blocked.com"]
outbound = "block"
[[routing.rules]]
ip = ["geoip:cn"]
outbound = "direct"
[[routing.rules]]
domain = ["domain:later.com"]
outbound = "proxy"
"""
CN_IP, US_IP = "1.0.1.1", "8.8.8.8"


@pytest.mark.parametrize(
    ("strategy", "target", "resolved", "expected"),
    [
        ("as_is", "x.com", None, None),
        ("as_is", "x.com", [CN_IP], None),  # addresses are ignored
        ("as_is", CN_IP, None, 1),
        ("ip_if_non_match", "blocked.com", None, 0),  # pass 1 matched: no DNS
        ("ip_if_non_match", "later.com", None, 2),  # pass 1 matched a later rule
        ("ip_if_non_match", "x.com", None, "need-ips"),
        ("ip_if_non_match", "x.com", [CN_IP], 1),  # pass 2
        ("ip_if_non_match", "x.com", [US_IP, CN_IP], 1),  # any address is enough
        ("ip_if_non_match", "x.com", ["::ffff:1.0.1.1"], 1),
        ("ip_if_non_match", "x.com", [US_IP], None),
        ("ip_if_non_match", "x.com", [], None),  # resolution failed
        ("ip_if_non_match", US_IP, None, None),  # an IP target never needs DNS
        ("ip_on_demand", "blocked.com", None, 0),  # no ip rule reached yet
        ("ip_on_demand", "later.com", None, "need-ips"),  # rule 1 comes first
        ("ip_on_demand", "later.com", [US_IP], 2),
        ("ip_on_demand", "later.com", [CN_IP], 1),
        ("ip_on_demand", "x.com", [], None),
        ("ip_on_demand", CN_IP, None, 1),
    ],
)
def test_domain_strategies(
    make_router: MakeRouter, strategy: str, target: str, resolved: list[str] | None,
    expected: object,
) -> None:  # fmt: skip
    router = make_router(f'[routing]\ndomain_strategy = "{strategy}"\n' + STRATEGY_RULES)
    assert outcome(router, flow(target), resolved) == expected


def test_need_ips_names_the_domain(make_router: MakeRouter) -> None:
    router = make_router('[routing]\ndomain_strategy = "ip_if_non_match"\n' + STRATEGY_RULES)
    result = router.decide(flow("WWW.X.COM."))
    assert result == NeedIps("www.x.com")
    assert str(result) == "need the addresses of www.x.com"


def test_no_ip_rules_means_nothing_to_resolve(make_router: MakeRouter) -> None:
    router = make_router(
        '[routing]\ndomain_strategy = "ip_if_non_match"\n'
        '[[routing.rules]]\ndomain = ["a.com"]\noutbound = "proxy"\n'
    )
    assert router.decide(flow("x.com")) == Decision("direct", None)


def test_ip_on_demand_only_asks_when_other_conditions_hold(make_router: MakeRouter) -> None:
    router = make_router(
        '[routing]\ndomain_strategy = "ip_on_demand"\n'
        '[[routing.rules]]\nport = "25"\nip = ["geoip:cn"]\noutbound = "block"\n'
    )
    assert router.decide(flow("x.com", 443)) == Decision("direct", None)
    assert router.decide(flow("x.com", 25)) == NeedIps("x.com")


def test_route_only_flows_see_both_domain_and_original_ip(make_router: MakeRouter) -> None:
    router = make_router('[routing]\ndomain_strategy = "ip_if_non_match"\n' + STRATEGY_RULES)
    both = flow("x.com", route_only_ip=CN_IP)
    assert both.domain == "x.com" and not both.target_is_domain
    assert router.decide(both) == Decision("direct", 1)
    assert router.decide(flow("later.com", route_only_ip=US_IP)) == Decision("proxy", 2)


def test_facts_normalise() -> None:
    facts = FlowFacts(
        "tcp", IPv6Address("::ffff:10.0.0.1"), 80, src_ip=IPv6Address("::ffff:1.2.3.4")
    )
    assert facts.dst_ip == IPv4Address("10.0.0.1") and facts.src_ip == IPv4Address("1.2.3.4")
    assert FlowFacts("tcp", None, 80, domain="A.B.").domain == "a.b"
    assert FlowFacts("tcp", None, 80, domain="A.B.").target_is_domain
    with pytest.raises(ValueError, match="needs a destination"):
        FlowFacts("tcp", None, 80)
    with pytest.raises(ValueError, match="needs a destination"):
        FlowFacts("tcp", None, 80, domain=".")
    assert parse_target("[::ffff:1.2.3.4]") == (IPv4Address("1.2.3.4"), None)
    assert parse_target("Example.COM.") == (None, "example.com")


def test_decide_keeps_no_state(make_router: MakeRouter) -> None:
    router = make_router(RULES)
    facts = [flow(t) for t in ("www.google.com", "8.8.8.8", "ad.example.com")] * 3
    first = [router.decide(f) for f in facts]
    assert [router.decide(f) for f in reversed(facts)] == list(reversed(first))


def test_lru_cache_gives_the_same_decisions(make_router: MakeRouter) -> None:
    plain, cached = make_router(RULES), make_router(RULES, cache_size=2)
    for target in ["www.google.com", "www.baidu.com", "x.org", "www.google.com", "a.cn"] * 3:
        assert plain.decide(flow(target)) == cached.decide(flow(target))


# -- the fast paths agree with a naive first-match over the rules --------------------------

_LABEL = st.text("ab1", min_size=1, max_size=3)
_NAME = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_ENTRY = st.one_of(
    _NAME.map(lambda v: f"full:{v}"),
    _NAME.map(lambda v: f"domain:{v}"),
    _NAME.map(lambda v: f"keyword:{v}"),
    _NAME,  # substring
    st.tuples(_LABEL, _NAME).map(lambda t: rf"regexp:(^|\.){t[0]}[0-9a]?\.{re.escape(t[1])}$"),
    st.tuples(_LABEL, _LABEL).map(lambda t: f"regexp:{t[0]}.*{t[1]}"),
)
# (domain entries or None, port or None, has an ip condition)
_RULE = st.tuples(
    st.one_of(st.none(), st.lists(_ENTRY, min_size=1, max_size=3)),
    st.one_of(st.none(), st.sampled_from([443, 80])),
    st.booleans(),
).filter(lambda r: r[0] is not None or r[1] is not None or r[2])


def _naive_domain(entry: str, domain: str) -> bool:
    kind, _, value = entry.partition(":") if ":" in entry else ("", "", entry)
    if kind == "full":
        return domain == value
    if kind == "domain":
        return domain == value or domain.endswith("." + value)
    if kind == "regexp":
        return re.search(value, domain) is not None
    return value in domain  # keyword, or no prefix


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(_RULE, min_size=1, max_size=6), st.lists(_NAME, min_size=1, max_size=6))
def test_decisions_equal_a_naive_first_match(
    geo: GeoData,
    base_config: str,
    rules: list[tuple[list[str] | None, int | None, bool]],
    names: list[str],
) -> None:
    toml = '[routing]\ndomain_strategy = "as_is"\n'
    for domains, port, has_ip in rules:
        toml += '[[routing.rules]]\noutbound = "proxy"\n'
        if domains is not None:
            toml += f"domain = {json.dumps(domains)}\n"
        if port is not None:
            toml += f'port = "{port}"\n'
        if has_ip:
            toml += 'ip = ["10.0.0.0/8"]\n'
    for cache in (0, 8):
        router = compile_router(parse_config_text(base_config + toml), geo, cache_size=cache)
        for name in names + [e.partition(":")[2] or e for r in rules for e in r[0] or ()]:
            if "(" in name or "*" in name or not name or parse_target(name)[1] != name:
                continue  # a regexp, or a name that is an IP address ("1.1.1.1")
            for port in (443, 80):
                expected = next(
                    (
                        i
                        for i, (domains, rule_port, has_ip) in enumerate(rules)
                        if not has_ip  # a domain target under as_is: ip conditions are false
                        and (rule_port is None or rule_port == port)
                        and (domains is None or any(_naive_domain(e, name) for e in domains))
                    ),
                    None,
                )
                assert outcome(router, flow(name, port)) == expected, (toml, name, port)
