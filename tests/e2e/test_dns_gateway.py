"""The DNS splitter on the real path: dig in the client namespace, trio-tproxy on the
gateway, real resolvers (dnsmasq, dnsdist) in the server namespace.

Two dnsmasq instances answer the same names differently, a "domestic" one (10.77.3.1)
and a "foreign" one (10.77.3.2), so every answer says which resolver it came from.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from netlab import Lab, requirements_met
from netlab.proxy import ProxyProcess

from ..dns.servers import (
    HEALTH_CHECK_NAME,
    Certs,
    Dnsdist,
    Dnsmasq,
    dig,
    make_certs,
    missing_binaries,
    wait_answers,
)
from .conftest import ECHO, PROXY_MARK, TPROXY_PORT, Gateway, lab_plan, start_peer

pytestmark = pytest.mark.netns

FAKE_DNS = Path(__file__).parents[1] / "dns" / "fake_dns.py"
DOMESTIC_IP, FOREIGN_IP = "10.77.3.1", "10.77.3.2"
SILENT_PORT, TRUNCATING_PORT, SOCKS_PORT = 5353, 5354, 1080
DOT_PORT, DOH_PORT, DNSDIST_PLAIN = 853, 443, 5300
BIG = 60  # A records in big.example: > 512 bytes, so it needs EDNS or TCP

DOMESTIC = {
    "news.cn": ["10.77.3.11"], "video.com": ["10.77.3.12"], "polluted.example": ["192.0.2.66"],
    "a.dot.test": ["10.77.3.41"], "a.doh.test": ["10.77.3.42"], "socks.example": ["10.77.3.15"],
    "hijacked.cn": ["10.77.3.13"], "hijacked.com": ["10.77.3.14"],
}  # fmt: skip
FOREIGN = {
    "news.cn": ["10.77.3.21"], "video.com": ["10.77.3.22"], "polluted.example": ["10.77.3.23"],
    "slow.example": ["10.77.3.24"], "a.dot.test": ["10.77.3.31"], "a.doh.test": ["10.77.3.32"],
    "mapped.example": [FOREIGN_IP], "socks.example": ["10.77.3.25"],
    "cached.example": ["10.77.3.26"], "hijacked.cn": ["10.77.3.16"],
    "hijacked.com": ["10.77.3.27"], "kept.example": ["10.77.3.28"],
}  # fmt: skip


@attrs.frozen
class Resolvers:
    lab: Lab
    domestic: Dnsmasq
    foreign: Dnsmasq
    certs: Certs
    truncating_log: Path


@pytest.fixture(scope="module")
def dns_lab() -> Iterator[Lab]:
    """One lab for the module: the gateway's cache carries over between tests, so each
    test asks names of its own where it counts upstream queries."""
    if reason := requirements_met() or missing_binaries(
        "dnsmasq", "dnsdist", "dig", "openssl", "microsocks"
    ):
        pytest.skip(reason)
    with Lab.create() as lab:
        start_peer(lab.server, "echo", ECHO)
        yield lab


@pytest.fixture(scope="module")
def resolvers(dns_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Resolvers:
    lab = dns_lab
    s = lab.server
    domestic = Dnsmasq(s.popen, s.workdir, "domestic", listen=DOMESTIC_IP, port=53,
                       records=DOMESTIC, txt={"news.cn": "domestic", "video.com": "domestic"})
    foreign = Dnsmasq(s.popen, s.workdir, "foreign", listen=FOREIGN_IP, port=53,
                      records=FOREIGN, txt={"news.cn": "foreign", "video.com": "foreign"})
    certs = make_certs(tmp_path_factory.mktemp("certs"), "dns.test", [s.ip4])
    # dnsdist (DoT, DoH) in front of the *domestic* resolver: an answer for *.dot.test or
    # *.doh.test with the domestic address proves the query took the encrypted path.
    Dnsdist(s.popen, s.workdir, certs, s.ip4, plain=DNSDIST_PLAIN, dot=DOT_PORT, doh=DOH_PORT,
            backend=f"{DOMESTIC_IP}:53")  # fmt: skip
    s.popen([sys.executable, str(FAKE_DNS), "--listen", f"{s.ip4}:{SILENT_PORT}", "--silent"],
            stdout=subprocess.DEVNULL)  # fmt: skip
    truncating_log = s.workdir / "truncating.log"
    records = [f"--record=big.example=A:10.77.4.{i}" for i in range(1, BIG + 1)]
    records.append("--record=ready.example=A:10.77.4.250")
    s.popen([sys.executable, str(FAKE_DNS), "--listen", f"{s.ip4}:{TRUNCATING_PORT}",
             "--truncate", "--log", str(truncating_log), *records], stdout=subprocess.DEVNULL)  # fmt: skip
    s.popen(["microsocks", "-i", s.ip4, "-p", str(SOCKS_PORT)], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)  # fmt: skip
    for ip in (DOMESTIC_IP, FOREIGN_IP):  # a name no test counts
        wait_answers(s.run, ip, 53, HEALTH_CHECK_NAME)
    wait_answers(s.run, s.ip4, DNSDIST_PLAIN, HEALTH_CHECK_NAME)
    wait_answers(s.run, s.ip4, TRUNCATING_PORT, "ready.example", tcp=True)
    return Resolvers(lab, domestic, foreign, certs, truncating_log)


def gateway_config(r: Resolvers) -> str:
    s = r.lab.server
    return f"""
[log]
level = "debug"
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = {TPROXY_PORT}
network = ["tcp", "udp"]
[inbounds.sniffing]
enabled = true
[[outbounds]]
tag = "direct"
type = "direct"
mark = {PROXY_MARK}
[[outbounds]]
tag = "block"
type = "block"
[[outbounds]]
tag = "dns-out"
type = "dns"
[[outbounds]]
tag = "proxy"
type = "socks"
server = "{s.ip4}:{SOCKS_PORT}"
mark = {PROXY_MARK}
[[routing.rules]]
inbound_tag = ["tproxy-in"]
port = "53"
outbound = "dns-out"
[[routing.rules]]
domain = ["domain:mapped.example"]
outbound = "block"
[policy]
grace = "1s"
[dns]
listen = ["{r.lab.gateway.lan_ip4}:53"]
[dns.hosts]
"printer.lan" = "10.77.1.50"
"dns.test" = "{s.ip4}"
[[dns.servers]]
address = "{DOMESTIC_IP}"
domains = ["domain:cn", "full:polluted.example"]
expect_ips = ["10.77.3.0/24"]
skip_fallback = true
[[dns.servers]]
address = "tls://dns.test"
domains = ["domain:dot.test"]
tls_ca = "{r.certs.ca}"
skip_fallback = true
[[dns.servers]]
address = "https://dns.test/dns-query"
domains = ["domain:doh.test"]
tls_ca = "{r.certs.ca}"
skip_fallback = true
[[dns.servers]]
address = "{s.ip4}:{SILENT_PORT}"
domains = ["domain:slow.example"]
timeout = "1s"
skip_fallback = true
[[dns.servers]]
address = "{s.ip4}:{TRUNCATING_PORT}"
domains = ["domain:big.example"]
skip_fallback = true
[[dns.servers]]
address = "{DOMESTIC_IP}"
domains = ["domain:socks.example"]
outbound = "proxy"
skip_fallback = true
[[dns.servers]]
address = "{FOREIGN_IP}"
"""


@pytest.fixture(scope="module")
def dns_gateway(resolvers: Resolvers) -> Iterator[Gateway]:
    lab = resolvers.lab
    lab.gateway.install_tproxy(lab_plan(lab))
    proxy = ProxyProcess(lab.gateway, gateway_config(resolvers))
    try:
        log = proxy.wait_for("ready:", timeout=20)
        assert f"dns on udp+tcp {lab.gateway.lan_ip4}:53" in log
        yield Gateway(lab, proxy)
    finally:
        proxy.stop()


def ask(gw: Gateway, name: str, *opts: str, qtype: str = "A") -> list[str]:
    return dig(gw.lab.client.run, gw.lab.gateway.lan_ip4, name, *opts, qtype=qtype)


def test_the_listener_splits_by_domain(dns_gateway: Gateway, resolvers: Resolvers) -> None:
    assert ask(dns_gateway, "news.cn") == ["10.77.3.11"]  # domestic
    assert ask(dns_gateway, "news.cn", "+tcp") == ["10.77.3.11"]
    assert ask(dns_gateway, "video.com") == ["10.77.3.22"]  # foreign
    assert ask(dns_gateway, "video.com", "+tcp") == ["10.77.3.22"]
    assert resolvers.domestic.queries("video.com") == 0  # a foreign name never leaks
    assert resolvers.foreign.queries("news.cn") == 0  # skip_fallback: never the other way


def test_cache_hit_asks_no_upstream(dns_gateway: Gateway, resolvers: Resolvers) -> None:
    for _ in range(3):
        assert ask(dns_gateway, "cached.example") == ["10.77.3.26"]
    assert resolvers.foreign.queries("cached.example") == 1


def test_hijacked_port_53_over_tcp_is_answered_by_the_splitter(
    dns_gateway: Gateway, resolvers: Resolvers
) -> None:
    lab = dns_gateway.lab
    # nothing listens on the server's port 53: only the dns outbound can answer
    for name, want in (("news.cn", "10.77.3.11"), ("video.com", "10.77.3.22")):
        assert dig(lab.client.run, lab.server.ip4, name, "+tcp") == [want]
    log = dns_gateway.proxy.wait_for("-> dns-out (rule #0)", count=2)
    line = next(x for x in log.splitlines() if "access" in x and f"{lab.server.ip4}:53" in x)
    assert "dns: 1 answered" in line


def test_hijacked_port_53_over_udp_is_answered_by_the_splitter(
    dns_gateway: Gateway, resolvers: Resolvers
) -> None:
    lab = dns_gateway.lab
    assert dig(lab.client.run, lab.server.ip4, "hijacked.cn") == ["10.77.3.13"]
    assert dig(lab.client.run, "192.0.2.53", "hijacked.com") == ["10.77.3.27"]
    assert resolvers.foreign.queries("hijacked.cn") == 0
    assert resolvers.domestic.queries("hijacked.com") == 0
    # (nothing answers at 192.0.2.53, which the lab does not even route: only the dns
    # outbound can; UDP flows reach the access log when they end, 120 s later)


def test_expect_ips_mismatch_falls_through(dns_gateway: Gateway, resolvers: Resolvers) -> None:
    assert ask(dns_gateway, "polluted.example") == ["10.77.3.23"]
    assert resolvers.domestic.queries("polluted.example") == 1  # asked first, rejected


def test_a_dead_upstream_times_out_and_the_next_answers(dns_gateway: Gateway) -> None:
    started = time.monotonic()
    assert ask(dns_gateway, "slow.example") == ["10.77.3.24"]
    assert 1.0 <= time.monotonic() - started < 4.5
    dns_gateway.proxy.wait_for("timed out after 1s")


def test_truncation_retries_over_tcp(dns_gateway: Gateway, resolvers: Resolvers) -> None:
    got = ask(dns_gateway, "big.example")  # dig sends EDNS 1232: the whole answer fits
    assert sorted(got) == sorted(f"10.77.4.{i}" for i in range(1, BIG + 1))
    asked = resolvers.truncating_log.read_text().split("\n")
    assert asked.count("udp big.example A") == 1 and asked.count("tcp big.example A") == 1
    plain = ask(dns_gateway, "big.example", "+noedns", "+ignore")  # 512 bytes: TC to the client
    assert len(plain) < BIG


def test_dot_and_doh_upstreams(dns_gateway: Gateway, resolvers: Resolvers) -> None:
    assert ask(dns_gateway, "a.dot.test") == ["10.77.3.41"]  # via dnsdist -> domestic
    assert ask(dns_gateway, "a.doh.test") == ["10.77.3.42"]
    assert resolvers.foreign.queries("a.dot.test") == 0
    assert resolvers.foreign.queries("a.doh.test") == 0


def test_query_through_the_socks_outbound(dns_gateway: Gateway, resolvers: Resolvers) -> None:
    lab = dns_gateway.lab
    assert ask(dns_gateway, "socks.example") == ["10.77.3.15"]
    log = resolvers.domestic.log_path.read_text()
    (line,) = [x for x in log.splitlines() if "query[A] socks.example" in x]
    assert f"from {lab.gateway.wan_ip4}" not in line  # it came from microsocks, not us
    assert f"from {lab.server.ip4}" in line or f"from {DOMESTIC_IP}" in line


def test_hosts_entries(dns_gateway: Gateway, resolvers: Resolvers) -> None:
    assert ask(dns_gateway, "printer.lan") == ["10.77.1.50"]
    assert ask(dns_gateway, "printer.lan", qtype="AAAA") == []
    assert resolvers.foreign.queries("printer.lan") == 0


def test_other_types_are_forwarded_along_the_split(dns_gateway: Gateway,
                                                   resolvers: Resolvers) -> None:  # fmt: skip
    assert ask(dns_gateway, "news.cn", qtype="TXT") == ['"domestic"']
    assert ask(dns_gateway, "video.com", qtype="TXT") == ['"foreign"']
    assert ask(dns_gateway, "video.com", "+tcp", qtype="TXT") == ['"foreign"']  # cached
    assert resolvers.domestic.queries("video.com", "TXT") == 0
    assert resolvers.foreign.queries("video.com", "TXT") == 1


def test_reverse_mapping_routes_by_the_resolved_name(dns_gateway: Gateway) -> None:
    lab = dns_gateway.lab
    assert ask(dns_gateway, "mapped.example") == [FOREIGN_IP]
    # raw bytes, nothing to sniff: only the reverse map knows the name
    result = lab.client.run(
        [sys.executable, str(Path(__file__).with_name("peers.py")), "connect",
         "--host", FOREIGN_IP, "--port", str(ECHO), "--timeout", "10"], check=False,
    )  # fmt: skip
    assert '"result"' in result.stdout
    log = dns_gateway.proxy.wait_for("block (rule #1)")
    line = next(x for x in log.splitlines() if "access" in x and f"{FOREIGN_IP}:{ECHO}" in x)
    assert "[mapped.example]" in line


def test_a_reload_keeps_the_cache_and_the_reverse_map(dns_gateway: Gateway,
                                                      resolvers: Resolvers) -> None:  # fmt: skip
    lab, proxy = dns_gateway.lab, dns_gateway.proxy
    assert ask(dns_gateway, "kept.example") == ["10.77.3.28"]
    assert ask(dns_gateway, "mapped.example") == [FOREIGN_IP]
    blocked = proxy.log().count("block (rule #1)")
    proxy.config_path.write_text(proxy.config_path.read_text() + "\n# edited\n")
    proxy.signal(signal.SIGHUP)
    log = proxy.wait_for("configuration reloaded", timeout=30)
    assert "dns: kept " in log
    assert ask(dns_gateway, "kept.example") == ["10.77.3.28"]
    assert resolvers.foreign.queries("kept.example") == 1  # answered from the kept cache
    # raw bytes to the address: only the kept reverse map knows the name
    lab.client.run(
        [sys.executable, str(Path(__file__).with_name("peers.py")), "connect",
         "--host", FOREIGN_IP, "--port", str(ECHO), "--timeout", "10"], check=False,
    )  # fmt: skip
    proxy.wait_for("block (rule #1)", count=blocked + 1)
