"""Config -> DiversionPlan, pure: which inbound, which marks, what bypass means, and the
combinations that would leak or loop refused with a path."""

from __future__ import annotations

import ipaddress
import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_tproxy.config import ConfigErrors, parse_config_text
from trio_tproxy.firewall import RESERVED_V4, RESERVED_V6, plan_from_config
from trio_tproxy.geo import GeoData, build_country_mmdb
from trio_tproxy.route import IpSet, build_ip_set

BASE = """
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = 12345
{inbound}
[[outbounds]]
tag = "direct"
type = "direct"
mark = 255
[[outbounds]]
tag = "block"
type = "block"
{rest}
"""

# A tiny country database: AA has two IPv4 blocks and one IPv6 block.
COUNTRIES = """\
203.0.114.0/24,AA
203.0.115.0/24,AA
198.51.101.0/24,BB
2001:db8:aa::/48,AA
"""


def config(rest: str = "", inbound: str = "") -> str:
    return BASE.format(rest=rest, inbound=inbound)


@pytest.fixture(scope="module")
def geo(tmp_path_factory: pytest.TempPathFactory) -> GeoData:
    root = tmp_path_factory.mktemp("geo")
    (root / "countries.csv").write_text(COUNTRIES)
    build_country_mmdb([root / "countries.csv"], root / "country.mmdb")
    return GeoData(root / "rules", root / "country.mmdb")


def plan_of(text: str, geo: GeoData | None = None, **kw: bool):  # type: ignore[no-untyped-def]
    cfg = parse_config_text(text)
    return plan_from_config(cfg, geo or GeoData(Path("/nonexistent"), Path("/nonexistent")), **kw)


def errors_of(text: str, geo: GeoData | None = None) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        plan_of(text, geo)
    return [str(e) for e in info.value.errors]


def test_defaults_divert_tcp_and_udp_to_the_inbound_and_bypass_geoip_private() -> None:
    plan = plan_of(config())
    assert (plan.tproxy_port, plan.tproxy_protocols, plan.udp_port) == (12345, ("tcp", "udp"), 12345)
    assert (plan.tcp_address, plan.udp_address, plan.redirect_port) == (None, None, None)
    assert (plan.fwmark, plan.route_table, plan.table) == (1, 100, "trio_tproxy")
    assert plan.proxy_marks == (255,)
    assert (plan.local, plan.fail_closed, plan.ipv6, plan.lan_interfaces) == (False, False, True, ())
    assert plan.priority_mangle == -150
    # geoip:private, merged: 224/4 + 240/4 + 255.255.255.255 is one /3.
    assert plan.bypass_v4 == (*RESERVED_V4[:-3], "224.0.0.0/3")
    assert plan.bypass_v6 == RESERVED_V6


def test_every_firewall_field_reaches_the_plan() -> None:
    plan = plan_of(config("""
[firewall]
mode = "local"
lan_interfaces = ["br-lan", "wlan*"]
fwmark = 0x10
route_table = 200
bypass = ["10.0.0.0/8", "fd00::/8", "192.0.2.7"]
fail_closed = true
table = "tp"
priority = -140
skip_users = ["nobody", "1000"]
ipv6 = false
""", inbound='listen = "0.0.0.0"'))  # fmt: skip
    assert plan.lan_interfaces == ("br-lan", "wlan*")
    assert (plan.fwmark, plan.route_table, plan.table, plan.priority_mangle) == (16, 200, "tp", -140)
    assert (plan.local, plan.fail_closed, plan.ipv6) == (True, True, False)
    assert plan.skip_users == ("nobody", "1000")
    assert plan.bypass_v4 == ("10.0.0.0/8", "192.0.2.7/32")
    assert plan.bypass_v6 == ("fd00::/8",)


def test_separate_tcp_and_udp_inbounds() -> None:
    plan = plan_of(config(inbound='network = "tcp"', rest="""
[[inbounds]]
tag = "udp-in"
type = "tproxy"
port = 12346
network = "udp"
mark = 2
"""))  # fmt: skip
    assert plan.tproxy_target("tcp") == (12345, None)
    assert plan.tproxy_target("udp") == (12346, None)
    assert plan.proxy_marks == (2, 255)  # the inbound's mark answers clients: ours too


def test_redirect_for_tcp_beside_tproxy_for_udp() -> None:
    text = config(inbound='network = "udp"', rest="""
[[inbounds]]
tag = "redir"
type = "redirect"
port = 12346
""")  # fmt: skip
    plan = plan_of(text)
    assert plan.tproxy_protocols == ("udp",)
    assert plan.redirect_port == 12346


def test_the_first_tproxy_inbound_wins_over_a_redirect_one() -> None:
    plan = plan_of(config(rest='[[inbounds]]\ntag = "r"\ntype = "redirect"\nport = 9'))
    assert plan.redirect_port is None
    assert plan.tproxy_protocols == ("tcp", "udp")


def test_an_ipv4_listener_with_ipv6_address_named_when_ipv6_is_off() -> None:
    plan = plan_of(config("[firewall]\nipv6 = false", inbound='listen = "127.0.0.1"'))
    assert plan.tproxy_target("tcp") == (12345, "127.0.0.1")
    assert plan.families == (4,)


@pytest.mark.parametrize(
    ("inbound", "rest", "expected"),
    [
        ('listen = "0.0.0.0"', "",
         'listens on IPv4 only (0.0.0.0), so diverted IPv6 traffic would find no listener: '
         'listen on "::" or set firewall.ipv6 = false @ $.inbounds[0].listen'),
        ('listen = "::1"', "", "IPv4 traffic would find no listener"),
        ("mark = 1", "",
         "mark 1 equals firewall.fwmark: replies to clients would be routed back into the "
         "gateway @ $.inbounds[0].mark"),
        ("", '[[outbounds]]\ntag = "unmarked"\ntype = "direct"\n[firewall]\nmode = "local"',
         'outbound \'unmarked\' has no mark: with firewall.mode = "local" its connections would '
         "be diverted back into the proxy (set a mark such as 255, or firewall.skip_users) "
         "@ $.outbounds[2].mark"),
        ("", '[firewall]\nbypass = ["geoip:aa"]', "@ $.firewall.bypass[0]"),
        ("", '[firewall]\nbypass = ["10.0.0.0/8", "10.0.0.1/8"]',
         "bad CIDR '10.0.0.1/8': 10.0.0.1/8 has host bits set @ $.firewall.bypass[1]"),
    ],
)  # fmt: skip
def test_leaks_and_loops_are_config_errors(inbound: str, rest: str, expected: str) -> None:
    errors = errors_of(config(rest, inbound))
    assert any(expected in e for e in errors), errors


def test_a_redirect_inbound_must_listen_on_a_wildcard() -> None:
    text = config("[firewall]\nipv6 = false", inbound='network = "udp"') + (
        '[[inbounds]]\ntag = "r"\ntype = "redirect"\nport = 9\nlisten = "127.0.0.1"\n'
    )
    assert errors_of(text) == [
        'a redirect inbound must listen on a wildcard address ("::" or "0.0.0.0") '
        "@ $.inbounds[1].listen"
    ]


def test_local_mode_trusts_skip_users_instead_of_marks() -> None:
    text = config('[[outbounds]]\ntag = "u"\ntype = "direct"\n'
                  '[firewall]\nmode = "local"\nskip_users = ["proxy"]')  # fmt: skip
    assert plan_of(text).skip_users == ("proxy",)


def test_all_errors_are_reported_together() -> None:
    text = config('[firewall]\nbypass = ["geoip:zz", "geoip:private", "geoip:yy"]',
                  inbound='listen = "0.0.0.0"\nmark = 1')  # fmt: skip
    paths = [e.rpartition(" @ ")[2] for e in errors_of(text)]
    assert paths == ["$.inbounds[0].listen", "$.inbounds[0].mark", "$.firewall.bypass[0]",
                     "$.firewall.bypass[2]"]  # fmt: skip


def test_geoip_country_and_its_complement(geo: GeoData) -> None:
    plan = plan_of(config('[firewall]\nbypass = ["geoip:aa", "198.51.101.0/25"]'), geo)
    assert plan.bypass_v4 == ("198.51.101.0/25", "203.0.114.0/23")  # adjacent blocks merged
    assert plan.bypass_v6 == ("2001:db8:aa::/48",)
    inverse = plan_of(config('[firewall]\nbypass = ["geoip:!AA"]'), geo)
    assert "203.0.114.0/23" not in inverse.bypass_v4
    covered = IpSet.from_networks(inverse.bypass_v4 + inverse.bypass_v6)
    assert ipaddress.ip_address("203.0.113.255") in covered
    assert ipaddress.ip_address("203.0.114.1") not in covered
    assert ipaddress.ip_address("2001:db8:aa::1") not in covered
    assert ipaddress.ip_address("::") in covered


def test_an_unknown_country_names_the_database(geo: GeoData) -> None:
    (message,) = errors_of(config('[firewall]\nbypass = ["geoip:zz"]'), geo)
    assert message.startswith("country 'ZZ' is not in ") and message.endswith("$.firewall.bypass[0]")


def test_remove_needs_no_geoip_database() -> None:
    plan = plan_of(config('[firewall]\nbypass = ["geoip:cn"]'), resolve_bypass=False)
    assert (plan.bypass_v4, plan.bypass_v6) == ((), ())


ENTRIES = st.lists(
    st.sampled_from(["geoip:aa", "geoip:!aa", "geoip:bb", "geoip:private", "10.0.0.0/8",
                     "203.0.114.128/25", "2001:db8::/32", "0.0.0.0/0", "::/0", "192.0.2.1"]),
    max_size=4,
)  # fmt: skip
ADDRESSES = st.one_of(
    st.ip_addresses(v=4),
    st.ip_addresses(v=6),
    st.sampled_from([ipaddress.ip_address(a) for a in (
        "203.0.114.0", "203.0.115.255", "203.0.116.0", "198.51.101.7", "10.255.255.255",
        "2001:db8:aa::", "2001:db8:ab::", "fe80::1", "255.255.255.255", "224.0.0.1",
    )]),
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(entries=ENTRIES, addresses=st.lists(ADDRESSES, min_size=1, max_size=20))
def test_bypass_means_what_the_same_entries_mean_in_routing_rules(
    geo: GeoData, entries: list[str], addresses: list[ipaddress.IPv4Address]
) -> None:
    bypass = "[firewall]\nbypass = [" + ", ".join(f'"{e}"' for e in entries) + "]"
    plan = plan_of(config(bypass), geo)
    as_cidrs = IpSet.from_networks(plan.bypass_v4 + plan.bypass_v6)
    as_rule = build_ip_set(entries, geo, "$")
    for address in addresses:
        assert (address in as_cidrs) == (address in as_rule), address
    # canonical: sorted, no overlaps, no host bits
    for cidrs in (plan.bypass_v4, plan.bypass_v6):
        nets = [ipaddress.ip_network(c) for c in cidrs]
        assert nets == sorted(nets)
        assert all(a.broadcast_address < b.network_address for a, b in itertools.pairwise(nets))
