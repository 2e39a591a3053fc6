"""`import clash`: a typical mihomo side-router config converts to a TOML that the real
`check` accepts from another directory, and whose decisions agree with mihomo's rule
semantics on a table of flows; what has no equivalent is reported with its path."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from trio_tproxy.config import parse_config_text
from trio_tproxy.importers import UnreadableInput, convert_clash

from .conftest import Case, Decider, assert_reported, fixture_in, omission_paths, repo_geodata

pytestmark = pytest.mark.usefixtures("need_mmdb")

CN_IP = "36.152.44.96"
EXAMPLE_IP = "93.184.216.34"  # not CN, not private


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trio_tproxy", *args], capture_output=True,
                          text=True, timeout=60, check=False, cwd=cwd)  # fmt: skip


# mihomo: first match wins; an IP rule without no-resolve resolves a domain target;
# MATCH takes the rest. Rule indexes are those of the YAML's `rules`.
MIHOMO_CASES = [
    Case("ads.example.com", "REJECT", 0),
    Case("sub.ads.example.com", "Proxy", 14, resolved=()),  # DOMAIN is exact
    Case("corp.example", "Office", 1),
    Case("wiki.corp.example", "Office", 1),
    Case("pagead.adservice.example.org", "REJECT", 2),
    Case("tracker42.example.net", "REJECT", 3),
    Case("tracker.example.net", "Proxy", 14, resolved=(EXAMPLE_IP,)),
    Case("stats.doubleclick.net", "REJECT", 4),
    Case("www.baidu.com", "DIRECT", 5),
    Case(EXAMPLE_IP, "DIRECT", 6, source="192.168.1.200"),
    Case(EXAMPLE_IP, "DIRECT", 7, port=6885),
    Case(EXAMPLE_IP, "DIRECT", 7, port=51413, network="udp"),
    Case(EXAMPLE_IP, "DIRECT", 8, src_port=5353),
    Case(EXAMPLE_IP, "Proxy", 9, network="udp"),
    Case("192.168.1.10", "DIRECT", 10, port=80),
    Case("fd00::1", "DIRECT", 11),
    Case("10.1.2.3", "DIRECT", 12),
    Case("1.2.4.8", "DIRECT", 13),
    Case("www.example.com", "DIRECT", 13, resolved=(CN_IP,)),  # GEOIP,CN resolves
    Case("www.example.com", "Proxy", 14, resolved=(EXAMPLE_IP,)),
    Case(EXAMPLE_IP, "Proxy", 14),
]


def test_mihomo_gateway_converts_checks_and_decides_alike(tmp_path: Path) -> None:
    source = fixture_in(tmp_path, "mihomo_gateway.yaml")
    out = tmp_path / "converted.toml"
    result = cli("import", "clash", str(source), "-o", str(out), cwd=Path(__file__).parent)
    assert result.returncode == 3, result.stderr
    assert "Traceback" not in result.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    check = cli("check", str(out), cwd=elsewhere)
    assert check.returncode == 0, check.stderr
    text = out.read_text()
    raw = tomllib.loads(text)
    assert [(i["tag"], i["type"], i["port"]) for i in raw["inbounds"]] == [
        ("tproxy-in", "tproxy", 7893),
        ("redir-in", "redirect", 7892),
    ]
    assert raw["inbounds"][0]["sniffing"] == {
        "enabled": True,
        "dest_override": ["http", "tls", "quic"],
        "exclude_domains": ["domain:push.apple.com"],
    }
    outbounds = {o["tag"]: o for o in raw["outbounds"]}
    assert raw["outbounds"][0]["tag"] == "Proxy"  # MATCH's target: the default
    assert outbounds["Proxy"] == {
        "tag": "Proxy",
        "type": "selector",
        "outbounds": ["Auto", "HK ss", "JP ss2022", "US trojan", "DIRECT"],
    }
    assert outbounds["Auto"] == {
        "tag": "Auto",
        "type": "urltest",
        "outbounds": ["HK ss", "JP ss2022", "US trojan"],
        "url": "http://cp.cloudflare.com/generate_204",
        "interval": "300s",
        "tolerance": "50ms",
    }
    assert outbounds["Office"]["type"] == "fallback"
    assert outbounds["Office"]["interval"] == "120s"
    assert outbounds["HK ss"] == {
        "tag": "HK ss",
        "type": "shadowsocks",
        "server": "hk.example.net:8388",
        "method": "aes-256-gcm",
        "password": "hk-pass-1",
        "mark": 6666,
    }
    assert outbounds["JP ss2022"]["network"] == ["tcp"]  # no `udp: true`
    assert outbounds["US trojan"]["sni"] == "us.example.net"
    assert outbounds["office socks"]["username"] == "alice"
    assert outbounds["DIRECT"] == {"tag": "DIRECT", "type": "direct", "mark": 6666}
    assert outbounds["REJECT"] == {"tag": "REJECT", "type": "block"}
    assert raw["api"] == {"listen": "127.0.0.1:9090", "secret": "s3cret"}
    dns = raw["dns"]
    assert dns["listen"] == ["0.0.0.0:1053"] and "query_strategy" not in dns
    assert dns["hosts"] == {
        "full:router.lan": ["192.168.1.1"],
        "domain:nas.home.arpa": ["192.168.1.5"],
    }
    servers = [(s["address"], s.get("domains"), s.get("expect_ips"), s.get("skip_fallback"),
                s.get("outbound")) for s in dns["servers"]]  # fmt: skip
    assert servers == [  # mihomo asks name servers directly unless `#proxy` says otherwise
        ("223.5.5.5:53", ["geosite:cn"], None, True, "DIRECT"),
        ("119.29.29.29:53", ["geosite:cn"], None, True, "DIRECT"),
        ("10.0.0.53:53", ["domain:corp.example"], None, True, "DIRECT"),
        ("https://doh.pub.example/dns-query", None, ["geoip:cn"], None, "DIRECT"),
        ("223.5.5.5:53", None, ["geoip:cn"], None, "DIRECT"),
        ("tls://1.1.1.1:853", None, None, None, "DIRECT"),
        ("https://dns.google.example/dns-query", None, None, None, "Proxy"),
        ("223.5.5.5:53", ["full:doh.pub.example", "full:dns.google.example"], None, True, "DIRECT"),
        (
            "119.29.29.29:53",
            ["full:doh.pub.example", "full:dns.google.example"],
            None,
            True,
            "DIRECT",
        ),
    ]
    # each approximation on its own line, with its path
    assert [line.partition(": ")[0] for line in result.stderr.splitlines()] == [
        "$.mixed-port",
        "$.sniffer.sniff.HTTP.ports",
        "$.sniffer.sniff.TLS.ports",
        "$.sniffer.sniff.QUIC.ports",
        "$.proxies[3]",  # socks5 without udp: true
        "$.rules[10]",  # no-resolve
        "$.rules[11]",
        "$.rules[12]",
        "$.dns.nameserver-policy",
        "import",
    ]
    assert raw["routing"]["domain_strategy"] == "ip_on_demand"
    decider = Decider(out, text, "rules")
    assert decider.rule_sources == list(range(15))
    for case in MIHOMO_CASES:
        assert decider.decide(case) == (case.outbound, case.rule), case
    # DNS: the policy's servers for its names; the others ask the name servers, whose
    # non-CN answers are passed over for the fallback's; bootstrap names the defaults.
    general = ["https://doh.pub.example/dns-query", "223.5.5.5:53", "tls://1.1.1.1:853",
               "https://dns.google.example/dns-query"]  # fmt: skip
    assert decider.dns_order("www.baidu.com") == ["223.5.5.5:53", "119.29.29.29:53", *general]
    assert decider.dns_order("wiki.corp.example") == ["10.0.0.53:53", *general]
    assert decider.dns_order("www.google.com") == general
    assert decider.dns_order("doh.pub.example") == ["223.5.5.5:53", "119.29.29.29:53", *general]
    # The reported difference: a domain resolving to a LAN address. mihomo skips the
    # no-resolve rules and sends it to MATCH; here the first IP rule takes it.
    lan = Case("printer.example.com", "DIRECT", 10, resolved=("192.168.1.5",))
    assert decider.decide(lan) == ("DIRECT", 10)


def test_all_ip_rules_no_resolve_keeps_as_is() -> None:
    text = """
tproxy-port: 7893
rules:
  - IP-CIDR,10.0.0.0/8,DIRECT,no-resolve
  - GEOIP,LAN,DIRECT,no-resolve
  - MATCH,REJECT
"""
    result = convert_clash(text, name="x.yaml", geodata=repo_geodata())
    assert result.omissions == ()
    cfg = parse_config_text(result.toml)
    assert cfg.routing.domain_strategy == "as_is"
    assert cfg.outbounds[0].tag == "REJECT" and cfg.outbounds[1].tag == "DIRECT"
    assert cfg.routing.rules[-1].network == ("tcp", "udp")


def test_without_match_direct_is_the_default() -> None:
    text = "redir-port: 7892\nrules:\n  - DOMAIN-SUFFIX,example.com,REJECT\n"
    cfg = parse_config_text(convert_clash(text, name="x", geodata=repo_geodata()).toml)
    assert [o.tag for o in cfg.outbounds] == ["DIRECT", "REJECT"]
    assert cfg.inbounds[0].TYPE == "redirect"


KITCHEN_SINK = """
port: 7890
socks-port: 7891
tproxy-port: 7893
mode: global
log-level: silent
interface-name: eth0
tun: {enable: true, stack: system}
proxy-providers: {p: {type: http, url: "http://example.com/sub", path: ./p.yaml}}
rule-providers: {ads: {type: http, behavior: domain, url: "http://example.com/ads"}}
sniffer:
  enable: true
  force-domain: ['+.v2ex.com']
  sniff: {HTTP: {ports: [80]}, BT: {}}
proxies:
  - {name: a, type: ss, server: s.example, port: 1, cipher: rc4-md5, password: x}
  - {name: b, type: ss, server: s.example, port: 2, cipher: aes-128-gcm, password: x,
     plugin: obfs, plugin-opts: {mode: tls}}
  - {name: c, type: vmess, server: v.example, port: 443, uuid: x, alterId: 0}
  - {name: d, type: trojan, server: t.example, port: 443, password: p, network: ws,
     ws-opts: {path: /}}
  - {name: e, type: socks5, server: 192.0.2.1, port: 1080, tls: true}
  - {name: f, type: http, server: 192.0.2.2, port: 443, tls: true}
  - {name: g, type: hysteria2, server: h.example, port: 443, password: p}
  - {name: a, type: http, server: 192.0.2.3, port: 80}
  - {type: ss, server: s.example, port: 3}
  - {name: h, type: trojan, server: t.example, port: 443, password: p,
     client-fingerprint: chrome, udp: false, smux: {enabled: true}}
  - 42
proxy-groups:
  - {name: LB, type: load-balance, proxies: [h], strategy: consistent-hashing}
  - {name: R, type: relay, proxies: [h, e]}
  - {name: S, type: select, proxies: [h, missing], use: [p], filter: HK}
  - {name: U, type: url-test, proxies: [missing]}
rules:
  - RULE-SET,ads,REJECT
  - PROCESS-NAME,curl,DIRECT
  - AND,((DOMAIN,a.com),(NETWORK,UDP)),REJECT
  - DOMAIN,x.com,Nowhere
  - IP-CIDR,1.2.3.4/33,DIRECT
  - GEOIP,CN,DIRECT,src
  - DOMAIN-SUFFIX,ok.example,S
  - 12345
  - DST-PORT,not-a-port,DIRECT
  - MATCH,DIRECT
  - DOMAIN,after.example,DIRECT
dns:
  enable: true
  enhanced-mode: fake-ip
  fake-ip-range: 198.18.0.1/16
  fake-ip-filter: ['*.lan']
  nameserver: [dhcp://en0, system, 'https://1.1.1.1/dns-query#h3=true',
               quic://dns.adguard.example, 'tcp://9.9.9.9#NoSuch', dns.plain.example,
               '8.8.8.8#h']
  fallback: [tls://8.8.4.4]
  proxy-server-nameserver: [1.1.1.1]
  fallback-filter: {geoip: false, ipcidr: [240.0.0.0/4]}
  nameserver-policy: {'rule-set:x': 1.1.1.1, 'geosite:cn,+.qq.com': [119.29.29.29]}
hosts: {ok.example: [1.1.1.1], list.example: {a: 1}, bad.example: 'not an address!'}
"""

SINK_REPORTS = [
    ("$.port", "only transparent inbounds"),
    ("$.socks-port", "only transparent inbounds"),
    ("$.mode", "mode 'global'"),
    ("$.interface-name", "no equivalent"),
    ("$.tun", "no equivalent"),
    ("$.proxy-providers", "no equivalent"),
    ("$.rule-providers", "no equivalent"),
    ("$.sniffer.force-domain", "no equivalent"),
    ("$.sniffer.sniff.HTTP.ports", "every port"),
    ("$.sniffer.sniff.BT", "not sniffed here"),
    ("$.proxies[0]", "cipher 'rc4-md5'"),
    ("$.proxies[1]", "plugins"),
    ("$.proxies[2]", "proxy type 'vmess'"),
    ("$.proxies[3]", "trojan over 'ws'"),
    ("$.proxies[4]", "SOCKS5 over TLS"),
    ("$.proxies[5]", "HTTPS proxy"),
    ("$.proxies[6]", "proxy type 'hysteria2'"),
    ("$.proxies[7].name", "already taken"),
    ("$.proxies[8]", "without a name"),
    ("$.proxies[9].client-fingerprint", "fingerprint"),
    ("$.proxies[9].smux", "no equivalent"),
    ("$.proxies[10]", "expected an object"),
    ("$.proxy-groups[0]", "group type 'load-balance'"),
    ("$.proxy-groups[1]", "group type 'relay'"),
    ("$.proxy-groups[2].proxies[1]", "no proxy or group 'missing'"),
    ("$.proxy-groups[2].use", "providers"),
    ("$.proxy-groups[2].filter", "no equivalent"),
    ("$.proxy-groups[3].proxies[0]", "no proxy or group 'missing'"),
    ("$.proxy-groups[3]", "no member"),
    ("$.rules[0]", "RULE-SET has no equivalent"),
    ("$.rules[1]", "PROCESS-NAME has no equivalent"),
    ("$.rules[2]", "AND has no equivalent"),
    ("$.rules[3]", "no proxy or group 'Nowhere'"),
    ("$.rules[4]", "not a CIDR"),
    ("$.rules[5]", "option 'src'"),
    ("$.rules[7]", "expected a string"),
    ("$.rules[8]", "bad port range"),
    ("$.rules[10]", "after MATCH"),
    ("$.dns.enhanced-mode", "fake-ip has no equivalent"),
    ("$.dns.fake-ip-range", "no equivalent"),
    ("$.dns.fake-ip-filter", "no equivalent"),
    ("$.dns.nameserver[0]", "dhcp://"),
    ("$.dns.nameserver[1]", "must be an IP address"),
    ("$.dns.nameserver[2]", "parameters 'h3=true'"),
    ("$.dns.nameserver[3]", "quic://"),
    ("$.dns.nameserver[4]", "no proxy or group 'NoSuch'"),
    ("$.dns.nameserver[5]", "must be an IP address"),
    ("$.dns.proxy-server-nameserver", "no equivalent"),
    ("$.dns.fallback-filter.ipcidr", "only geoip"),
    ("$.dns.nameserver-policy['rule-set:x']", "rule sets"),
    ("$.dns.nameserver-policy", "the other servers are asked next"),
    ("$.hosts['list.example']", "expected IP addresses or host names"),
    ("$.hosts['bad.example']", "expected IP addresses or host names"),
]


def test_every_construct_without_an_equivalent_is_reported_with_its_path() -> None:
    result = convert_clash(KITCHEN_SINK, name="sink.yaml", geodata=repo_geodata())
    assert_reported(result, SINK_REPORTS)
    assert set(omission_paths(result)) == {path for path, _ in SINK_REPORTS}
    cfg = parse_config_text(result.toml)
    tags = [(o.tag, o.TYPE) for o in cfg.outbounds]
    assert tags[0] == ("DIRECT", "direct")
    assert dict(tags)["h"] == "trojan" and dict(tags)["S"] == "selector"
    for name in ("a", "b", "c", "d", "e", "f", "g", "LB", "R", "U"):
        assert dict(tags)[name] == "block", name
    assert cfg.outbound("h").network == ("tcp",)  # type: ignore[union-attr]
    assert cfg.outbound("S").outbounds == ("h",)  # type: ignore[union-attr]
    assert [r.outbound for r in cfg.routing.rules] == ["S", "DIRECT"]
    assert [s.address for s in cfg.dns.servers] == [
        "119.29.29.29:53",
        "8.8.8.8:53",
        "tls://8.8.4.4",
    ]
    assert cfg.dns.servers[0].domains == ("geosite:cn", "domain:qq.com")
    assert cfg.dns.servers[1].outbound == "h" and cfg.dns.servers[1].expect_ips == ()
    assert cfg.dns.servers[0].outbound == cfg.dns.servers[2].outbound == "DIRECT"
    assert cfg.log.level == "error"
    assert cfg.inbounds[0].sniffing.dest_override == ("http",)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("proxies: [", "not valid YAML: expected the node content"),
        ("a: b: c", "not valid YAML: mapping values are not allowed here at line 1"),
        ("- 1\n- 2\n", "expected a YAML mapping at the top, got a list"),
        ("", "expected a YAML mapping at the top, got null"),
        ("!!python/object:os.system {}", "not valid YAML"),
    ],
)
def test_unreadable_input_is_one_clear_line(tmp_path: Path, text: str, words: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    result = cli("import", "clash", str(bad), cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: ") and words in result.stderr


def test_country_mmdb_beside_the_file_is_the_geoip_database(tmp_path: Path) -> None:
    source = tmp_path / "config.yaml"
    source.write_text("tproxy-port: 7893\n")
    (tmp_path / "Country.mmdb").write_bytes(b"")
    (tmp_path / "GeoSite.dat").write_bytes(b"")
    result = cli("import", "clash", str(source), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    geodata = tomllib.loads(result.stdout)["geodata"]
    assert geodata["geoip"] == str(tmp_path / "Country.mmdb")
    assert geodata["geosite_dat"] == str(tmp_path / "GeoSite.dat")


def test_yaml_errors_raise_unreadable_input() -> None:
    with pytest.raises(UnreadableInput, match="line 2 column"):
        convert_clash("a: 1\n  b: [\n", name="x", geodata=repo_geodata())


def test_a_cycle_of_groups_is_broken_and_reported() -> None:
    text = """
tproxy-port: 7893
proxy-groups:
  - {name: A, type: select, proxies: [B, DIRECT]}
  - {name: B, type: url-test, proxies: [A, REJECT]}
  - {name: C, type: fallback, proxies: [C]}
"""
    result = convert_clash(text, name="x", geodata=repo_geodata())
    assert [str(o) for o in result.omissions] == [
        "$.proxy-groups[1].proxies: member 'A' closes a cycle of groups; dropped",
        "$.proxy-groups[2].proxies: member 'C' closes a cycle of groups; dropped",
        "$.proxy-groups[2].proxies: no member left; written as a block outbound",
    ]
    cfg = parse_config_text(result.toml)
    assert cfg.outbound("A").outbounds == ("B", "DIRECT")  # type: ignore[union-attr]
    assert cfg.outbound("B").outbounds == ("REJECT",)  # type: ignore[union-attr]
    assert cfg.outbound("C").TYPE == "block"


def test_socks5_without_udp_is_reported() -> None:
    text = "tproxy-port: 1\nproxies:\n  - {name: s, type: socks5, server: 192.0.2.1, port: 1}\n"
    result = convert_clash(text, name="x", geodata=repo_geodata())
    assert [o.path for o in result.omissions] == ["$.proxies[0]"]
    assert "UDP ASSOCIATE" in result.omissions[0].why


@pytest.mark.parametrize(("proxy", "words"), [
    ("{name: p, type: http, server: 192.0.2.1, port: 1, username: 'a:b', password: x}",
     "cannot contain ':'"),
    ("{name: p, type: socks5, server: 192.0.2.1, port: 1, username: '', password: x, "
     "udp: true}", "1-255 bytes"),
])  # fmt: skip
def test_credentials_the_proxy_cannot_send_make_it_a_placeholder(proxy: str, words: str) -> None:
    """Found by the importer fuzz test: the converted config must pass check, so a
    proxy whose user check would reject is a placeholder, reported with the reason."""
    text = f"tproxy-port: 1\nproxies:\n  - {proxy}\n"
    result = convert_clash(text, name="x", geodata=repo_geodata())
    assert_reported(result, [("$.proxies[0]", words)])
    cfg = parse_config_text(result.toml)
    assert cfg.outbound("p").TYPE == "block"


def test_redir_port_equal_to_tproxy_port_is_reported() -> None:
    result = convert_clash("tproxy-port: 7893\nredir-port: 7893\n", name="x",
                           geodata=repo_geodata())  # fmt: skip
    assert [str(o) for o in result.omissions] == [
        "$.redir-port: port 7893 is already taken by another inbound; not converted"
    ]
    assert [i.tag for i in parse_config_text(result.toml).inbounds] == ["tproxy-in"]


def test_in_port_and_in_type_pick_inbounds() -> None:
    text = """
tproxy-port: 7893
redir-port: 7892
proxies:
  - {name: s, type: ss, server: 192.0.2.1, port: 1, cipher: aes-128-gcm, password: p,
     dialer-proxy: t}
rules:
  - IN-PORT,7892,REJECT
  - IN-TYPE,TPROXY,DIRECT
  - IN-TYPE,MIXED,DIRECT
  - IN-PORT,7890-7891,DIRECT
"""
    result = convert_clash(text, name="x", geodata=repo_geodata())
    assert [o.path for o in result.omissions] == ["$.proxies[0]", "$.rules[2]", "$.rules[3]"]
    assert "dialer-proxy" in result.omissions[0].why
    cfg = parse_config_text(result.toml)
    assert [(r.inbound_tag, r.outbound) for r in cfg.routing.rules] == [
        (("redir-in",), "REJECT"),
        (("tproxy-in",), "DIRECT"),
    ]
    assert cfg.outbound("s").TYPE == "block"


def test_respect_rules_routes_the_name_servers() -> None:
    text = "tproxy-port: 1\ndns:\n  respect-rules: true\n  nameserver: [1.1.1.1]\n"
    cfg = parse_config_text(convert_clash(text, name="x", geodata=repo_geodata()).toml)
    assert cfg.dns.servers[0].outbound is None


def test_a_controller_open_to_the_network_needs_a_secret() -> None:
    open_ = "tproxy-port: 1\nexternal-controller: 0.0.0.0:9090\nrouting-mark: -1\n"
    result = convert_clash(open_, name="x", geodata=repo_geodata())
    assert [o.path for o in result.omissions] == ["$.routing-mark", "$.external-controller"]
    assert parse_config_text(result.toml).api is None
    guarded = "tproxy-port: 1\nexternal-controller: ':9090'\nsecret: s\n"
    cfg = parse_config_text(convert_clash(guarded, name="x", geodata=repo_geodata()).toml)
    assert cfg.api is not None and str(cfg.api.listen) == "0.0.0.0:9090"  # ":port": all
    local = "tproxy-port: 1\nexternal-controller: '[::1]:9090'\n"
    cfg = parse_config_text(convert_clash(local, name="x", geodata=repo_geodata()).toml)
    assert cfg.api is not None and cfg.api.secret == ""
