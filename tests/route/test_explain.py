"""``match`` explanations, text and JSON, for a realistic configuration."""

from __future__ import annotations

import json
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path

import pytest

from trio_tproxy.config import parse_config_text
from trio_tproxy.geo import GeoData
from trio_tproxy.route import FlowFacts, Router, compile_router, explain, render_json, render_text

REPO_RULES = Path(__file__).resolve().parents[2] / "rules"
REALISTIC = """
[routing]
domain_strategy = "ip_if_non_match"
[[routing.rules]]
domain = ["geosite:category-ads-all"]
outbound = "block"
[[routing.rules]]
inbound_tag = ["tproxy-in"]
network = "udp"
port = "53"
outbound = "dns-out"
[[routing.rules]]
domain = ["geosite:cn", "domain:example.cn", "full:www.example.org", "keyword:shop"]
outbound = "direct"
[[routing.rules]]
ip = ["geoip:private", "geoip:cn", "203.0.113.0/24"]
outbound = "direct"
[[routing.rules]]
port = "6881-6889,51413"
protocol = ["bittorrent"]
source = ["192.168.1.50"]
outbound = "direct"
[[routing.rules]]
domain = ["geosite:geolocation-!cn"]
outbound = "proxy"
"""


@pytest.fixture(scope="module")
def router(geodata_dir: Path, base_config: str) -> Router:
    cfg = parse_config_text(base_config + REALISTIC)
    return compile_router(cfg, GeoData(REPO_RULES, geodata_dir / "country.mmdb"))


def line_of(name: str, text: str) -> int:
    lines = (REPO_RULES / name).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.split("#")[0].split() == [text])


def test_geosite_match_names_list_file_and_line(router: Router) -> None:
    facts = FlowFacts("tcp", None, 443, domain="www.google.com", protocol="tls")
    expl = explain(router, facts)
    google = line_of("google", "google.com")
    assert render_text(expl) == "\n".join(
        [
            "target:   www.google.com (tcp port 443, protocol tls)",
            "outbound: proxy",
            "rule:     rule[5] domain=geosite:geolocation-!cn => proxy",
            "because:",
            f'  domain "www.google.com" matched "domain:google.com" '
            f"(geosite:geolocation-!cn, {REPO_RULES}/google:{google})",
        ]
    )
    data = render_json(expl)
    assert data["outbound"] == "proxy" and data["rule"] == 5
    assert data["rule_text"] == "rule[5] domain=geosite:geolocation-!cn => proxy"
    assert data["facts"]["protocol"] == "tls"
    json.dumps(data)  # serialisable as is


def test_inline_entries_and_several_conditions(router: Router) -> None:
    expl = explain(router, FlowFacts("tcp", None, 443, domain="myshop.example"))
    assert expl.decision.rule_index == 2
    assert expl.reasons == ('domain "myshop.example" matched "keyword:shop"',)
    facts = FlowFacts(
        "udp", ip_address("8.8.8.8"), 6881, src_ip=ip_address("192.168.1.50"),
        protocol="bittorrent", inbound_tag="tproxy-in",
    )  # fmt: skip
    expl = explain(router, facts)
    assert expl.decision.rule_index == 4
    assert expl.reasons == (
        "port 6881 in 6881-6889,51413",
        'protocol "bittorrent" matched "bittorrent"',
        "source 192.168.1.50 matched 192.168.1.50",
    )
    dns = explain(router, FlowFacts("udp", ip_address("1.1.1.1"), 53, inbound_tag="tproxy-in"))
    assert dns.reasons == (
        "network udp in udp",
        "port 53 in 53",
        'inbound_tag "tproxy-in" in tproxy-in',
    )


def test_resolved_addresses_and_the_default(router: Router) -> None:
    facts = FlowFacts("tcp", None, 443, domain="unknown.invalid-tld-xyz")
    without = explain(router, facts)
    assert without.decision.rule_index is None
    assert without.notes == (
        "domain_strategy ip_if_non_match would resolve unknown.invalid-tld-xyz; explained "
        "without its addresses (use --resolve to look them up)",
    )
    text = render_text(without)
    assert "rule:     default" in text and "no rule matched" in text and "note: " in text
    resolved = explain(router, facts, [ip_address("8.8.4.4"), ip_address("1.0.1.1")])
    assert resolved.decision.outbound == "direct" and resolved.decision.rule_index == 3
    assert resolved.reasons == (
        "ip 1.0.1.1 (resolved from unknown.invalid-tld-xyz) matched geoip:cn",
    )
    assert "resolved: 8.8.4.4, 1.0.1.1" in render_text(resolved)
    assert render_json(resolved)["resolved"] == ["8.8.4.4", "1.0.1.1"]
    failed = explain(router, facts, [])
    assert "resolved: (resolution failed)" in render_text(failed)
    data = render_json(failed)
    assert (data["outbound"], data["rule"], data["rule_text"]) == ("direct", None, None)


def test_ip_target_explanation(router: Router) -> None:
    expl = explain(router, FlowFacts("tcp", ip_address("192.168.1.1"), 80))
    assert expl.reasons == ("ip 192.168.1.1 matched geoip:private",)
    assert render_json(expl)["resolved"] is None


def test_explain_agrees_with_decide(router: Router) -> None:
    samples: list[Callable[[], FlowFacts]] = [
        lambda: FlowFacts("tcp", None, 443, domain="ad.doubleclick.net"),
        lambda: FlowFacts("tcp", None, 443, domain="www.baidu.com"),
        lambda: FlowFacts("tcp", ip_address("1.0.1.1"), 443),
        lambda: FlowFacts("tcp", None, 443, domain="github.com"),
    ]
    for make in samples:
        facts = make()
        expl = explain(router, facts)
        assert router.decide(facts) == expl.decision
        assert len(expl.reasons) >= 1
