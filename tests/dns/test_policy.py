"""dns/policy.py: server order, expect_ips, hosts, query_strategy (pure, table-driven)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from trio_tproxy.config import ConfigErrors, parse_config_text
from trio_tproxy.dns.message import QTYPE_A, QTYPE_AAAA
from trio_tproxy.dns.policy import (
    MAX_ALIAS_DEPTH,
    build_hosts,
    compile_servers,
    filter_expected,
    query_types,
    select_servers,
)
from trio_tproxy.geo import GeoData
from trio_tproxy.route import IpSet

from .conftest import config_text


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def geo_for(rules_dir: Path) -> GeoData:
    return GeoData(rules_dir, rules_dir / "none.mmdb")


def servers(rules_dir: Path, *specs: str, fallback: str = ""):  # type: ignore[no-untyped-def]
    blocks = "\n".join(f"[[dns.servers]]\naddress = \"10.0.0.{i}\"\n{s}"
                       for i, s in enumerate(specs))  # fmt: skip
    cfg = parse_config_text(config_text(fallback + "\n" + blocks, rules_dir))
    return compile_servers(cfg.dns, geo_for(rules_dir)), cfg.dns.disable_fallback


SPLIT = (
    'domains = ["regexp:\\\\.example\\\\.com$"]',  # 0
    'domains = ["keyword:example"]',  # 1
    'domains = ["domain:example.com"]',  # 2
    'domains = ["domain:www.example.com"]\nskip_fallback = true',  # 3
    'domains = ["full:www.example.com"]\nskip_fallback = true',  # 4
    "",  # 5: a plain fallback server
    'domains = ["geosite:cn"]',  # 6: cn list = domain:cn, full:www.example.org
)


@pytest.mark.parametrize(
    ("name", "order"),
    [
        # full, then longest suffix, shorter suffix, keyword, regexp; then fallbacks
        ("www.example.com", (4, 3, 2, 1, 0, 5, 6)),
        ("api.www.example.com", (3, 2, 1, 0, 5, 6)),
        ("example.com", (2, 1, 0, 5, 6)),  # regexp needs ".example.com": 0 is a fallback
        ("shop.example.net", (1, 0, 2, 5, 6)),
        ("x.cn", (6, 0, 1, 2, 5)),
        ("www.example.org", (6, 1, 0, 2, 5)),  # the list's full: beats keyword
        ("other.net", (0, 1, 2, 5, 6)),  # nothing matches: fallbacks in config order
    ],
)
def test_selection_order(rules_dir: Path, name: str, order: tuple[int, ...]) -> None:
    plans, _ = servers(rules_dir, *SPLIT)
    assert select_servers(name, plans) == order


def test_disable_fallback_leaves_only_matching_servers(rules_dir: Path) -> None:
    plans, disabled = servers(rules_dir, *SPLIT, fallback="disable_fallback = true")
    assert disabled
    assert select_servers("www.example.com", plans, disable_fallback=True) == (4, 3, 2, 1, 0)
    assert select_servers("other.net", plans, disable_fallback=True) == ()


def test_skip_fallback_server_only_for_its_domains(rules_dir: Path) -> None:
    plans, _ = servers(rules_dir, 'domains = ["domain:cn"]\nskip_fallback = true', "")
    assert select_servers("a.cn", plans) == (0, 1)
    assert select_servers("a.com", plans) == (1,)


def test_same_rank_keeps_config_order(rules_dir: Path) -> None:
    plans, _ = servers(rules_dir, 'domains = ["domain:example.com"]',
                       'domains = ["domain:example.com", "keyword:zzz"]')  # fmt: skip
    assert select_servers("a.example.com", plans) == (0, 1)


def test_bad_domain_list_names_its_path(rules_dir: Path) -> None:
    with pytest.raises(ConfigErrors) as err:
        servers(rules_dir, "", 'domains = ["geosite:nosuch"]')
    assert "$.dns.servers[1].domains[0]" in str(err.value)


def test_filter_expected() -> None:
    expect = IpSet.from_networks(["10.0.0.0/8", "fd00::/8"])
    got = filter_expected([ip("10.1.1.1"), ip("192.0.2.1"), ip("fd00::1")], expect)
    assert got == (ip("10.1.1.1"), ip("fd00::1"))
    assert filter_expected([ip("192.0.2.1")], expect) == ()
    assert filter_expected([ip("192.0.2.1")], None) == (ip("192.0.2.1"),)


def test_query_types() -> None:
    assert query_types("use_ip") == (QTYPE_A, QTYPE_AAAA)
    assert query_types("use_ipv4") == (QTYPE_A,)
    assert query_types("use_ipv6") == (QTYPE_AAAA,)


# -- hosts ---------------------------------------------------------------------------------

HOSTS = {
    "router.lan": ["192.168.1.1"],
    "full:nas.lan": ["192.168.1.2", "fd00::2"],
    "domain:internal.example": ["10.0.0.5", "fd00::5"],
    "keyword:printer": ["10.0.0.9"],
    "regexp:^cam[0-9]+\\.": ["10.0.0.10"],
    "geosite:ads": ["0.0.0.0"],
    "alias.example": ["router.lan"],
    "mixed.example": ["10.0.0.7", "ignored.example"],
    "chain1.example": ["chain2.example"],
    "chain2.example": ["chain3.example"],
    "chain3.example": ["chain4.example"],
    "chain4.example": ["chain5.example"],
    "chain5.example": ["chain6.example"],
    "chain6.example": ["10.6.6.6"],
    "v4only.example": ["10.0.0.4"],
    "elsewhere.example": ["upstream.example"],
}


@pytest.mark.parametrize(
    ("name", "qtype", "answer"),
    [
        ("router.lan", QTYPE_A, ("router.lan", ["192.168.1.1"])),
        ("www.router.lan", QTYPE_A, ("www.router.lan", None)),  # bare key = full match
        ("nas.lan", QTYPE_AAAA, ("nas.lan", ["fd00::2"])),
        ("internal.example", QTYPE_A, ("internal.example", ["10.0.0.5"])),
        ("db.internal.example", QTYPE_AAAA, ("db.internal.example", ["fd00::5"])),
        ("myprinter.office", QTYPE_A, ("myprinter.office", ["10.0.0.9"])),
        ("cam12.home", QTYPE_A, ("cam12.home", ["10.0.0.10"])),
        ("ads.example.com", QTYPE_A, ("ads.example.com", ["0.0.0.0"])),
        ("x.tracker.net", QTYPE_A, ("x.tracker.net", ["0.0.0.0"])),
        # a name alone is an alias, looked up again in hosts
        ("alias.example", QTYPE_A, ("router.lan", ["192.168.1.1"])),
        # a name among addresses is dropped (v2ray)
        ("mixed.example", QTYPE_A, ("mixed.example", ["10.0.0.7"])),
        # a matching key without the family: an empty answer, no server asked
        ("v4only.example", QTYPE_AAAA, ("v4only.example", [])),
        # an alias hosts cannot resolve goes to the servers under its new name
        ("elsewhere.example", QTYPE_A, ("upstream.example", None)),
        ("unknown.example", QTYPE_A, ("unknown.example", None)),
    ],
)
def test_hosts(rules_dir: Path, name: str, qtype: int,
               answer: tuple[str, list[str] | None]) -> None:  # fmt: skip
    table = build_hosts(HOSTS, geo_for(rules_dir))
    got = table.lookup(name, qtype)
    want_name, want_ips = answer
    assert got.name == want_name
    assert got.addresses == (None if want_ips is None else tuple(ip(a) for a in want_ips))


def test_merged_keys_in_config_order(rules_dir: Path) -> None:
    table = build_hosts({"domain:a.example": ["10.0.0.1"], "keyword:example": ["10.0.0.2"],
                         "full:x.a.example": ["10.0.0.3"]}, geo_for(rules_dir))  # fmt: skip
    got = table.lookup("x.a.example", QTYPE_A)
    assert got.addresses == (ip("10.0.0.1"), ip("10.0.0.2"), ip("10.0.0.3"))


def test_alias_chain_stops_at_the_depth_limit(rules_dir: Path) -> None:
    table = build_hosts(HOSTS, geo_for(rules_dir))
    assert MAX_ALIAS_DEPTH == 5
    # chain1 -> ... -> chain6 needs six hops: the servers get the name reached
    assert table.lookup("chain1.example", QTYPE_A) == type(table.lookup("x", 1))(
        "chain6.example", None
    )
    assert table.lookup("chain2.example", QTYPE_A).addresses == (ip("10.6.6.6"),)


def test_alias_loop_terminates(rules_dir: Path) -> None:
    table = build_hosts({"a.example": ["b.example"], "b.example": ["a.example"]},
                        geo_for(rules_dir))  # fmt: skip
    assert table.lookup("a.example", QTYPE_A).addresses is None


def test_hosts_errors_name_the_key(rules_dir: Path) -> None:
    with pytest.raises(ConfigErrors) as err:
        build_hosts({"geosite:nosuch": ["1.2.3.4"]}, geo_for(rules_dir))
    assert "$.dns.hosts['geosite:nosuch']" in str(err.value)


def test_empty_hosts_is_falsy(rules_dir: Path) -> None:
    assert not build_hosts({}, geo_for(rules_dir))
    assert build_hosts({}, geo_for(rules_dir)).lookup("a.b", QTYPE_A).addresses is None
