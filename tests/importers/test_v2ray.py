"""`import v2ray`: published-style v2ray/Xray transparent proxy configs convert to a TOML
that the real `check` accepts from another directory, and whose decisions agree with
v2ray's on a table of flows; what has no equivalent is reported with its path."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from trio_tproxy.importers import UnreadableInput, convert_v2ray

from .conftest import (
    Case,
    Decider,
    assert_reported,
    convert,
    fixture_in,
    omission_paths,
    repo_geodata,
)

pytestmark = pytest.mark.usefixtures("need_mmdb")

US_IP = "142.250.72.4"  # a Google address: US in the database
CN_IP = "36.152.44.96"  # a Baidu address: CN in the database


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trio_tproxy", *args], capture_output=True,
                          text=True, timeout=60, check=False, cwd=cwd)  # fmt: skip


def imported(tmp_path: Path, name: str) -> tuple[Path, str, list[str]]:
    """Run the real command on a fixture (with .dat files beside it), then the real
    `check` on its output from an unrelated directory."""
    source = fixture_in(tmp_path, name)
    out = tmp_path / "out" / "converted.toml"
    out.parent.mkdir()
    result = cli("import", "v2ray", str(source), "-o", str(out), cwd=Path(__file__).parent)
    assert "Traceback" not in result.stderr
    assert result.returncode in (0, 3), result.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = cli("check", str(out), cwd=elsewhere)
    assert check.returncode == 0, check.stderr
    assert ": ok: " in check.stdout
    text = out.read_text()
    return out, text, result.stderr.splitlines()


# The v2ray guide's TPROXY gateway: IPOnDemand; the first outbound (the proxy) is the
# default; DNS-module queries carry the inbound tag "dns".
GUIDE_CASES = [
    Case("8.8.8.8", "dns-out", 0, port=53, network="udp"),  # hijacked DNS
    Case("203.0.113.9", "direct", 1, port=123, network="udp"),  # NTP
    Case("223.5.5.5", "direct", 2, port=53, network="udp", inbound="dns"),
    Case("114.114.114.114", "direct", 2),
    Case("8.8.8.8", "proxy", 3, port=53, network="udp", inbound="dns"),
    Case("1.1.1.1", "proxy", 3),
    Case("ad.doubleclick.net", "block", 4),  # category-ads-all includes google@ads
    Case("198.51.100.7", "direct", 5, port=6881, protocol="bittorrent"),
    Case("192.168.1.10", "direct", 6, port=80),
    Case("1.2.4.8", "direct", 6),  # CN
    Case("www.baidu.com", "direct", 6, resolved=(CN_IP,)),  # IPOnDemand: rule 2 resolves
    Case("www.baidu.com", "direct", 7, resolved=()),  # unresolvable: the geosite rule
    Case("www.google.com", "proxy", None, resolved=(US_IP,)),
    Case("93.184.216.34", "proxy", None),
]


def test_v2ray_guide_converts_checks_and_decides_alike(tmp_path: Path) -> None:
    out, text, stderr = imported(tmp_path, "v2ray_tproxy_guide.json")
    raw = tomllib.loads(text)
    assert raw["geodata"]["geosite_dat"] == str(tmp_path / "geosite.dat")
    assert raw["geodata"]["geoip_dat"] == str(tmp_path / "geoip.dat")
    assert raw["routing"]["domain_strategy"] == "ip_on_demand"
    inbound = raw["inbounds"][0]
    assert inbound == {
        "tag": "transparent",
        "type": "tproxy",
        "listen": "::",
        "port": 12345,
        "network": ["tcp", "udp"],
        "mark": 255,
        "sniffing": {"enabled": True, "dest_override": ["http", "tls"]},
    }
    assert [(o["tag"], o["type"]) for o in raw["outbounds"]] == [
        ("proxy", "block"),
        ("direct", "direct"),
        ("block", "block"),
        ("dns-out", "dns"),
    ]
    assert raw["outbounds"][1]["domain_strategy"] == "use_ip"
    assert raw["outbounds"][2]["response"] == "http"
    assert [s["address"] for s in raw["dns"]["servers"]] == [
        "8.8.8.8:53",
        "1.1.1.1:53",
        "114.114.114.114:53",
        "223.5.5.5:53",
    ]
    assert raw["dns"]["servers"][3]["domains"] == ["geosite:cn", "ntp.org", "vps.example.net"]
    assert raw["dns"]["hosts"] == {
        "vps.example.net": ["192.0.2.44"],
        "geosite:category-ads-all": ["127.0.0.1"],
    }
    assert raw["firewall"]["fwmark"] == 1
    assert stderr[:2] == [
        "$.inbounds[1]: socks inbound has no equivalent: only transparent dokodemo-door "
        "inbounds (followRedirect) are converted",
        "$.outbounds[0]: protocol 'vmess' has no equivalent; written as a block outbound "
        "'proxy' so the rules naming it keep their places: replace it",
    ]
    # 1:1 and in order: every source rule has its converted rule, at the same place
    decider = Decider(out, text, "routing.rules")
    assert decider.rule_sources == list(range(8))
    for case in GUIDE_CASES:
        assert decider.decide(case) == (case.outbound, case.rule), case


XRAY_CASES = [
    Case("162.159.200.1", "direct", 0, port=123, network="udp"),
    Case("8.8.4.4", "dns-out", 1, port=53, network="udp"),
    Case("114.114.114.114", "direct", 2, port=53, network="udp", inbound="dns"),
    Case("2001:4860:4860::8888", "proxy", 3),
    Case("googleads.g.doubleclick.net", "block", 4),
    Case("203.0.113.50", "direct", 5, port=51413, network="udp", protocol="bittorrent"),
    Case("192.168.1.1", "direct", 6, port=80),
    Case(CN_IP, "direct", 6),
    Case("www.baidu.com", "direct", 7),  # IPIfNonMatch: the first pass already matches
    # The last rule matches every flow in the first pass, so nothing is ever resolved:
    Case("github.com", "proxy", 8, resolved=(CN_IP,)),
    Case("www.google.com", "proxy", 8),
    Case(US_IP, "proxy", 8, network="udp"),
]


def test_xray_tutorial_converts_checks_and_decides_alike(tmp_path: Path) -> None:
    out, text, stderr = imported(tmp_path, "xray_tproxy_tutorial.jsonc")
    assert stderr == []  # everything has an equivalent: exit 0
    raw = tomllib.loads(text)
    sniffing = raw["inbounds"][0]["sniffing"]
    assert sniffing == {
        "enabled": True,
        "dest_override": ["http", "tls", "quic"],
        "route_only": True,
        "exclude_domains": ["courier.push.apple.com", "Mijia Cloud"],
    }
    trojan = raw["outbounds"][1]
    assert trojan == {
        "tag": "proxy",
        "type": "trojan",
        "server": "tj.example.org:443",
        "password": "correct horse battery",
        "sni": "tj.example.org",
        "alpn": ["h2", "http/1.1"],
        "mark": 2,
    }
    assert raw["outbounds"][0]["domain_strategy"] == "use_ipv4"
    assert raw["log"] == {"level": "warning", "access": False}
    assert raw["dns"]["query_strategy"] == "use_ipv4"
    assert raw["dns"]["servers"][2]["expect_ips"] == ["geoip:cn"]
    assert raw["dns"]["servers"][3]["address"] == "[2001:4860:4860::8888]:53"
    assert raw["routing"]["domain_strategy"] == "ip_if_non_match"
    decider = Decider(out, text, "routing.rules")
    assert decider.rule_sources == list(range(9))
    for case in XRAY_CASES:
        assert decider.decide(case) == (case.outbound, case.rule), case


def test_exit_status_and_stdout(tmp_path: Path) -> None:
    source = fixture_in(tmp_path, "xray_tproxy_tutorial.jsonc", dats=False)
    whole = cli("import", "v2ray", str(source), cwd=tmp_path)
    assert whole.returncode == 0 and whole.stderr == ""
    tomllib.loads(whole.stdout)  # without -o: the TOML on stdout
    assert "geosite_dat" not in whole.stdout  # no .dat beside it, none named
    partial = cli("import", "v2ray", str(fixture_in(tmp_path, "v2ray_tproxy_guide.json",
                                                    dats=False)), cwd=tmp_path)  # fmt: skip
    assert partial.returncode == 3
    assert partial.stderr.splitlines()[-1].startswith("import: 2 construct(s)")


def test_assets_option_points_at_the_dat_files(tmp_path: Path) -> None:
    source = fixture_in(tmp_path, "xray_tproxy_tutorial.jsonc", dats=False)
    assets = tmp_path / "assets"
    assets.mkdir()
    (assets / "geosite.dat").write_bytes(b"")
    result = cli("import", "v2ray", str(source), "--assets", str(assets), cwd=tmp_path)
    raw = tomllib.loads(result.stdout)
    assert raw["geodata"]["geosite_dat"] == str(assets / "geosite.dat")
    assert "geoip_dat" not in raw["geodata"]


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{", "not valid JSON: Expecting property name enclosed in double quotes at line 1"),
        ('{"inbounds": [}', "not valid JSON"),
        ("[1, 2]", "expected a JSON object at the top, got a list"),
        ("", "not valid JSON"),
        ('{"inbounds": {"port": 1}}', "$.inbounds: expected a list"),
    ],
)
def test_unreadable_input_is_one_clear_line(tmp_path: Path, text: str, words: str) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    result = cli("import", "v2ray", str(bad), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith("error: ") and words in result.stderr


def test_missing_and_binary_files_are_one_clear_line(tmp_path: Path) -> None:
    missing = cli("import", "v2ray", str(tmp_path / "nope.json"), cwd=tmp_path)
    assert missing.returncode == 1 and missing.stderr.count("\n") == 1
    assert "cannot read" in missing.stderr and "Traceback" not in missing.stderr
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    result = cli("import", "v2ray", str(binary), cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr


def test_json_comments_do_not_break_strings() -> None:
    text = """{
      # a v2ray comment
      "outbounds": [{"protocol": "freedom", "tag": "a//b"},  // comment
        {"protocol": "blackhole", "tag": "c/*d*/e#f"}]  /* the end */
    }"""
    result = convert_v2ray(text, name="x.json", geodata=repo_geodata())
    raw = tomllib.loads(result.toml)
    assert [o["tag"] for o in raw["outbounds"]] == ["a//b", "c/*d*/e#f"]


def test_a_json_error_names_the_line_despite_comments() -> None:
    text = '/* one\ntwo */\n{\n "log": {}, // fine\n "x": ]\n}'
    with pytest.raises(UnreadableInput, match="line 5 column 7"):
        convert_v2ray(text, name="x.json", geodata=repo_geodata())
