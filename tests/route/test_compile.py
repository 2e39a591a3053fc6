"""Compilation: errors with their configuration paths; the reusable builders; IpSet."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest

from trio_tproxy.config import Config, ConfigErrors
from trio_tproxy.geo import GeoData
from trio_tproxy.route import IpSet, build_ip_set, compile_router, geoip_codes

MakeConfig = Callable[[str], Config]


def errors_of(cfg: Config, geo: GeoData) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        compile_router(cfg, geo)
    return [str(e) for e in info.value.errors]


def test_every_bad_entry_is_reported_with_its_path(geo: GeoData, make_config: MakeConfig) -> None:
    cfg = make_config(
        """
        [[routing.rules]]
        domain = ["geosite:cn"]
        outbound = "direct"
        [[routing.rules]]
        port = "80"
        outbound = "proxy"
        [[routing.rules]]
        domain = ["domain:ok.com", "geosite:nosuch", "geosite:google"]
        ip = ["geoip:cn", "geoip:xx"]
        source = ["geoip:zz"]
        outbound = "block"
        """
    )
    assert errors_of(cfg, geo) == [
        f"geosite:nosuch: no list 'nosuch' (no file {geo.rules_dir}/nosuch)"
        " @ $.routing.rules[2].domain[1]",
        f"country 'ZZ' is not in {geo.geoip_path} @ $.routing.rules[2].source[0]",
        f"country 'XX' is not in {geo.geoip_path} @ $.routing.rules[2].ip[1]",
    ]


def test_list_errors_carry_file_and_line(
    tmp_path: Path, geodata_dir: Path, make_config: MakeConfig
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "mine").write_text("ok.com\ninclude:loop\n")
    (rules / "loop").write_text("include:mine\n")
    (rules / "bad").write_text("fine.com\nnot_fine.com\n")
    geo = GeoData(rules, geodata_dir / "country.mmdb")
    cfg = make_config(
        '[[routing.rules]]\ndomain = ["geosite:mine", "geosite:bad"]\noutbound = "proxy"\n'
    )
    assert errors_of(cfg, geo) == [
        f"geosite:mine: {rules}/loop:1: include cycle: mine -> loop -> mine"
        " @ $.routing.rules[0].domain[0]",
        f"geosite:bad: {rules}/bad:2: domain:not_fine.com: only a-z, 0-9, '.' and '-' are"
        " allowed @ $.routing.rules[0].domain[1]",
    ]


def test_missing_database_is_reported_at_each_rule_that_needs_it(
    geodata_dir: Path, make_config: MakeConfig
) -> None:
    geo = GeoData(geodata_dir / "rules", geodata_dir / "nowhere.mmdb")
    cfg = make_config(
        '[[routing.rules]]\nip = ["geoip:private"]\noutbound = "direct"\n'
        '[[routing.rules]]\nip = ["10.0.0.0/8", "geoip:cn"]\noutbound = "direct"\n'
    )
    (error,) = errors_of(cfg, geo)
    assert error.endswith("@ $.routing.rules[1].ip[1]")
    assert "trio-tproxy geodata build /usr/share/tor/geoip /usr/share/tor/geoip6 -o" in error


def test_private_only_config_compiles_without_database(
    geodata_dir: Path, make_config: MakeConfig
) -> None:
    geo = GeoData(geodata_dir / "rules", geodata_dir / "nowhere.mmdb")
    cfg = make_config('[[routing.rules]]\nip = ["geoip:private"]\noutbound = "direct"\n')
    assert len(compile_router(cfg, geo).rules) == 1


def test_ipv4_mapped_entries_match_ipv4_flows(geo: GeoData) -> None:
    s = build_ip_set(["::ffff:10.0.0.0/104", "::ffff:192.0.2.1"], geo, "$.x")
    assert IPv4Address("10.1.2.3") in s and IPv6Address("::ffff:10.1.2.3") in s
    assert IPv4Address("192.0.2.1") in s and IPv4Address("11.0.0.0") not in s


def test_build_ip_set(geo: GeoData) -> None:
    s = build_ip_set(["geoip:private", "geoip:cn", "203.0.113.0/24", "2001:db8::1"], geo, "$.x")
    assert IPv4Address("1.0.1.9") in s and IPv4Address("203.0.113.255") in s
    assert IPv6Address("2001:db8::1") in s and IPv6Address("2001:db8::2") not in s
    assert IPv6Address("::ffff:10.9.9.9") in s and IPv4Address("8.8.8.8") not in s
    with pytest.raises(ConfigErrors) as info:
        build_ip_set(["8.8.8.8", "geoip:qq"], geo, "$.dns.servers[0].expect_ips")
    assert [e.path for e in info.value.errors] == ["$.dns.servers[0].expect_ips[1]"]
    assert geoip_codes(["GeoIP:!CN", "geoip:us", "1.2.3.4"]) == {"cn", "us"}


def test_ipset_operations() -> None:
    s = IpSet([(10, 20), (21, 30), (40, 50)], [(5, 5)])
    assert s.range_count == 3 and bool(s)
    assert repr(s) == "IpSet(2 IPv4 + 1 IPv6 ranges)"
    assert IPv4Address(30) in s and IPv4Address(31) not in s and IPv4Address(9) not in s
    assert IPv4Address(40) in s and IPv4Address(50) in s and IPv4Address(51) not in s
    assert "10.0.0.1" not in s  # only address objects
    inverse = s.complement()
    assert IPv4Address(0) in inverse and IPv4Address(10) not in inverse
    assert IPv4Address(2**32 - 1) in inverse and IPv6Address(5) not in inverse
    assert inverse.complement() == s
    assert IpSet().complement().complement() == IpSet()
    assert s.union(IpSet([(31, 39)])) == IpSet([(10, 50)], [(5, 5)])
    assert IpSet.from_networks(["10.0.0.0/8"]) == IpSet([(0x0A000000, 0x0AFFFFFF)])


def test_ipv4_bounds_take_four_bytes_each() -> None:
    """geoip:cn holds ~8,000 IPv4 ranges: as ints in lists they took 40 bytes a bound."""
    s = IpSet([(i * 256, i * 256 + 99) for i in range(8000)], [(2**127, 2**128 - 1)])
    bounds = s._v4_starts, s._v4_ends
    assert all(b.itemsize == 4 and len(b) == 8000 for b in bounds)  # type: ignore[attr-defined]
    assert IPv4Address(256 * 7999 + 99) in s and IPv4Address(256 * 7999 + 100) not in s
    assert IPv4Address(2**32 - 1) in s.complement() and IPv6Address(2**128 - 1) in s
