"""`firewall.bypass` with a geoip.dat: the same `geoip:` names as routing, from the .dat."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from trio_tproxy.cli import main
from trio_tproxy.config import ConfigErrors, parse_config_text
from trio_tproxy.firewall import RESERVED_V4, RESERVED_V6, plan_from_config
from trio_tproxy.geo.dat import encode_geoip_dat

CONFIG = """
[geodata]
geoip = "/nonexistent/country.mmdb"
{geodata}
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = 12345
[[outbounds]]
tag = "direct"
type = "direct"
mark = 255
[firewall]
bypass = {bypass}
"""
NETS = {
    "TELEGRAM": ["91.108.4.0/22", "91.108.8.0/22", "2001:b28:f23d::/48"],
    "CN": ["1.0.1.0/24"],
}


@pytest.fixture
def geoip_dat(tmp_path: Path) -> Path:
    path = tmp_path / "assets" / "geoip.dat"
    path.parent.mkdir()
    table = {code: [ipaddress.ip_network(n) for n in nets] for code, nets in NETS.items()}
    path.write_bytes(encode_geoip_dat(table))
    (path.parent / "extra.dat").write_bytes(
        encode_geoip_dat({"OFFICE": [ipaddress.ip_network("198.51.100.0/24")]})
    )
    return path


def text(geoip_dat: Path | None, bypass: str) -> str:
    geodata = "" if geoip_dat is None else f'geoip_dat = "{geoip_dat}"'
    return CONFIG.format(geodata=geodata, bypass=bypass)


def test_geoip_dat_names_in_bypass(geoip_dat: Path) -> None:
    bypass = '["geoip:telegram", "geoip:private", "ext-ip:extra.dat:office"]'
    plan = plan_from_config(parse_config_text(text(geoip_dat, bypass)))
    # no PRIVATE in this geoip.dat: the built-in list; TELEGRAM and OFFICE from the files
    assert set(plan.bypass_v4) >= {"91.108.4.0/22", "91.108.8.0/22"}
    assert "2001:b28:f23d::/48" in plan.bypass_v6
    assert set(RESERVED_V6) <= set(plan.bypass_v6)
    assert "10.0.0.0/8" in plan.bypass_v4
    covered = [ipaddress.ip_network(n) for n in plan.bypass_v4]
    assert any(ipaddress.ip_address("198.51.100.7") in n for n in covered)
    assert not any(ipaddress.ip_address("1.0.1.1") in n for n in covered)  # CN not asked for


def test_default_bypass_takes_private_from_the_dat_when_it_has_one(tmp_path: Path) -> None:
    path = tmp_path / "geoip.dat"
    path.write_bytes(encode_geoip_dat({"PRIVATE": [ipaddress.ip_network("10.0.0.0/8")]}))
    plan = plan_from_config(parse_config_text(text(path, '["geoip:private"]')))
    assert (plan.bypass_v4, plan.bypass_v6) == (("10.0.0.0/8",), ())
    no_private = tmp_path / "other.dat"
    no_private.write_bytes(encode_geoip_dat({}))
    plan = plan_from_config(parse_config_text(text(no_private, '["geoip:private"]')))
    assert plan.bypass_v6 == RESERVED_V6
    assert plan.bypass_v4 == (*RESERVED_V4[:-3], "224.0.0.0/3")


def test_bad_names_and_files_are_errors_with_paths(geoip_dat: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigErrors) as info:
        parse_config_text(text(None, '["geoip:telegram"]'))
    assert [str(e) for e in info.value.errors] == [
        "bad geoip entry 'geoip:telegram': expected geoip:CC, geoip:!CC or geoip:private "
        "(other names need geodata.geoip_dat) @ $.firewall.bypass[0]"
    ]
    cfg = parse_config_text(text(geoip_dat, '["geoip:nosuch", "ext:extra.dat:nope"]'))
    with pytest.raises(ConfigErrors) as info:
        plan_from_config(cfg)
    assert [str(e) for e in info.value.errors] == [
        f"{geoip_dat}: no list 'NOSUCH' in this geoip file @ $.firewall.bypass[0]",
        f"{geoip_dat.parent}/extra.dat: no list 'NOPE' in this geoip file @ $.firewall.bypass[1]",
    ]
    cut = tmp_path / "cut.dat"
    cut.write_bytes(geoip_dat.read_bytes()[:-3])
    with pytest.raises(ConfigErrors) as info:
        plan_from_config(parse_config_text(text(cut, '["geoip:private"]')))
    (error,) = info.value.errors
    assert str(error).startswith(f"{cut}: offset ")
    assert str(error).endswith(" @ $.firewall.bypass[0]")


def test_firewall_print_with_a_geoip_dat(
    geoip_dat: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "fw.toml"
    config.write_text(text(geoip_dat, '["geoip:telegram"]'))
    assert main(["firewall", "print", str(config)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "91.108.4.0/22" in out
    assert "2001:b28:f23d::/48" in out
