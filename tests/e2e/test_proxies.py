"""The socks and http outbounds through the real TPROXY path, against real proxies in
the server namespace: microsocks (SOCKS5, with and without RFC 1929), tinyproxy (HTTP
CONNECT, with and without Basic auth), danted (SOCKS5 UDP ASSOCIATE), and peers that
are down or never answer.

    client --LAN-- gateway (TPROXY -> trio-tproxy) --WAN-- server (proxies, nginx, dnsmasq)

Names like www.proxied.test exist only in the proxies' private /etc/hosts (a bind mount
in their own mount namespace): the client dials an IP, trio-tproxy sniffs the HTTP Host
header, and the name travels to the proxy, which resolves it itself.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from netlab import Lab, Netns, ServerNode
from netlab.servers import HttpServer, start_http_server, wait_listening

from .conftest import PEERS, PROXY_MARK, SOURCE, TPROXY_PORT, Gateway

pytestmark = pytest.mark.netns

PROXY_PEERS = Path(__file__).with_name("proxy_peers.py")
SOCKS, SOCKS_AUTH, DANTE, SILENT, DOWN = 1080, 1081, 1082, 1998, 1999
TINYPROXY, TINYPROXY_AUTH = 3128, 3129
WEB = 8080
USER, PASSWORD = "alice", "s3cret"
HANDSHAKE = 2.0
DOMAIN = "proxied.test"
# host name -> outbound tag (the routing rule matches the sniffed name)
ROUTES = {
    "www": "proxy", "auth": "proxy-auth", "badauth": "socks-badauth", "down": "socks-down",
    "silent": "socks-silent", "web": "web", "webauth": "web-auth", "webbad": "web-badauth",
}  # fmt: skip
PAGE = "hello through an upstream proxy\n"


def gateway_config(lab: Lab) -> str:
    s = lab.server.ip4
    socks = [("proxy", SOCKS, None), ("proxy-auth", SOCKS_AUTH, PASSWORD),
             ("socks-badauth", SOCKS_AUTH, "wrong"), ("socks-down", DOWN, None),
             ("socks-silent", SILENT, None)]  # fmt: skip
    http = [("web", TINYPROXY, None), ("web-auth", TINYPROXY_AUTH, PASSWORD),
            ("web-badauth", TINYPROXY_AUTH, "wrong")]  # fmt: skip
    outbounds = ""
    for kind, entries in (("socks", socks), ("http", http)):
        for tag, port, password in entries:
            creds = f'username = "{USER}"\npassword = "{password}"\n' if password else ""
            outbounds += (f'[[outbounds]]\ntag = "{tag}"\ntype = "{kind}"\n'
                          f'server = "{s}:{port}"\nmark = {PROXY_MARK}\n{creds}')  # fmt: skip
    rules = "".join(
        f'[[routing.rules]]\ndomain = "full:{name}.{DOMAIN}"\noutbound = "{tag}"\n'
        for name, tag in ROUTES.items()
    )
    return f"""
[log]
level = "debug"
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = {TPROXY_PORT}
network = ["tcp"]
[inbounds.sniffing]
enabled = true
dest_override = ["http", "tls"]
[[outbounds]]
tag = "direct"
type = "direct"
mark = {PROXY_MARK}
{outbounds}
[policy]
handshake = "{HANDSHAKE:g}s"
grace = "2s"
{rules}
[[routing.rules]]
ip = ["{lab.server.ip6}"]
outbound = "proxy"
[[routing.rules]]
port = "{SOURCE}"
outbound = "proxy"
"""


@attrs.frozen
class Upstreams:
    lab: Lab
    nginx: HttpServer
    logs: dict[str, Path]

    def log(self, name: str) -> str:
        return self.logs[name].read_text()

    def wait_log(self, name: str, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in (log := self.log(name)):
                return log
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the {name} log:\n{self.log(name)}")


def start_with_hosts(ns: Netns, name: str, argv: list[str], port: int, *, udp: bool = False
                     ) -> tuple[subprocess.Popen[str], Path]:  # fmt: skip
    """Run argv in ``ns`` with the lab's /etc/hosts, in a private mount namespace (the
    host's /etc/hosts is never touched); wait until it listens on ``port``."""
    hosts = ns.workdir / "hosts"
    log = ns.workdir / f"{name}.log"
    script = f"mount --bind {shlex.quote(str(hosts))} /etc/hosts && exec \"$@\""
    process = ns.popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
                        "sh", *argv], stdout=log.open("w"), stderr=subprocess.STDOUT)  # fmt: skip
    wait_listening(ns, port, udp=udp, process=process)
    return process, log


def tinyproxy_conf(ns: ServerNode, port: int, auth: bool) -> Path:
    conf = ns.workdir / f"tinyproxy-{port}.conf"
    conf.write_text("\n".join([
        f"Port {port}", f"Listen {ns.ip4}", "Timeout 60",
        "LogLevel Connect", "MaxClients 64", f"ConnectPort {WEB}", f"ConnectPort {SOURCE}",
        *([f"BasicAuth {USER} {PASSWORD}"] if auth else []), "",
    ]))  # fmt: skip
    return conf


def ns_ip(ns: Netns) -> str:
    return str(ns.ip4)


def dante_conf(ns: Netns) -> Path:
    conf = ns.workdir / "danted.conf"
    ip = ns_ip(ns)
    conf.write_text(f"""logoutput: stderr
internal: {ip} port = {DANTE}
external: {ip}
external: {ns.ip6}
socksmethod: none
clientmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{
    from: 0/0 to: 0/0
    log: connect disconnect error
}}
socks pass {{
    from: 0/0 to: 0/0
    command: connect udpassociate udpreply
    log: connect disconnect error
}}
""")
    return conf


@pytest.fixture
def upstreams(lab: Lab, tmp_path: Path) -> Iterator[Upstreams]:
    s = lab.server
    (s.workdir / "hosts").write_text(
        "127.0.0.1 localhost\n" + "".join(f"{s.ip4} {n}.{DOMAIN}\n" for n in ROUTES)
    )
    (tmp_path / "index.html").write_text(PAGE)
    nginx = start_http_server(s, tmp_path, port=WEB)
    logs = {}
    _, logs["microsocks"] = start_with_hosts(s, "microsocks", ["microsocks", "-i", s.ip4, "-p", str(SOCKS)], SOCKS)
    _, logs["microsocks-auth"] = start_with_hosts(
        s, "microsocks-auth",
        ["microsocks", "-i", s.ip4, "-p", str(SOCKS_AUTH), "-u", USER, "-P", PASSWORD], SOCKS_AUTH,
    )  # fmt: skip
    for port, auth in ((TINYPROXY, False), (TINYPROXY_AUTH, True)):
        name = f"tinyproxy-{port}"
        _, logs[name] = start_with_hosts(
            s, name, ["tinyproxy", "-d", "-c", str(tinyproxy_conf(s, port, auth))], port
        )
    silent = s.popen([sys.executable, str(PROXY_PEERS), "--port", str(SILENT)])
    assert silent.stdout is not None and silent.stdout.readline().strip() == "listening"
    yield Upstreams(lab, nginx, logs)


@pytest.fixture
def proxied(make_gateway: object, upstreams: Upstreams) -> tuple[Gateway, Upstreams]:
    gw = make_gateway(gateway_config(upstreams.lab))  # type: ignore[operator]
    return gw, upstreams


def curl(lab: Lab, name: str, *, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    host = f"{name}.{DOMAIN}"
    return lab.client.run(
        ["curl", "-sS", "--max-time", str(timeout), "--resolve", f"{host}:{WEB}:{lab.server.ip4}",
         f"http://{host}:{WEB}/index.html"],
        check=False, timeout=timeout + 10,
    )  # fmt: skip


def access_line(gw: Gateway, text: str) -> str:
    log = gw.proxy.wait_for(text)
    (line,) = [ln for ln in log.splitlines() if "trio_tproxy.access" in ln and text in ln]
    return line


@pytest.mark.parametrize(("name", "log", "tag"), [
    ("www", "microsocks", "proxy"),
    ("auth", "microsocks-auth", "proxy-auth"),
])  # fmt: skip
def test_socks_carries_the_sniffed_domain_to_the_proxy(
    proxied: tuple[Gateway, Upstreams], name: str, log: str, tag: str
) -> None:
    gw, up = proxied
    lab = up.lab
    out = curl(lab, name)
    assert (out.returncode, out.stdout) == (0, PAGE), out.stderr
    # the proxy got the name (ATYP 3), from the gateway's WAN address
    up.wait_log(log, f"{lab.gateway.wan_ip4}: connected to {name}.{DOMAIN}:{WEB}")
    # the web server saw the proxy, not the gateway or the client
    (entry,) = up.nginx.requests()
    assert entry.remote_addr == lab.server.ip4
    line = access_line(gw, f"-> {tag} (rule #")
    assert f"[{name}.{DOMAIN}] tcp/http1" in line and line.endswith("done")


def test_socks_without_a_domain_sends_the_ip(proxied: tuple[Gateway, Upstreams]) -> None:
    gw, up = proxied
    lab = up.lab
    out = lab.client.run(["curl", "-sS", "--max-time", "15", f"http://[{lab.server.ip6}]:{WEB}/index.html"],
                         check=False, timeout=30)  # fmt: skip
    assert (out.returncode, out.stdout) == (0, PAGE), out.stderr
    up.wait_log("microsocks", f"connected to {lab.server.ip6}:{WEB}")  # ATYP 4
    (entry,) = up.nginx.requests()
    assert entry.remote_addr == lab.server.ip6
    access_line(gw, "-> proxy (rule #")


@pytest.mark.parametrize(("name", "log"), [("web", "tinyproxy-3128"), ("webauth", "tinyproxy-3129")])
def test_http_connect_carries_the_sniffed_domain(
    proxied: tuple[Gateway, Upstreams], name: str, log: str
) -> None:
    gw, up = proxied
    lab = up.lab
    out = curl(lab, name)
    assert (out.returncode, out.stdout) == (0, PAGE), out.stderr
    up.wait_log(log, f"CONNECT {name}.{DOMAIN}:{WEB} HTTP/1.1")
    (entry,) = up.nginx.requests()
    assert entry.remote_addr == lab.server.ip4
    assert access_line(gw, f"[{name}.{DOMAIN}]").endswith("done")


def test_failing_proxies_cost_only_their_flows(proxied: tuple[Gateway, Upstreams]) -> None:
    """Wrong credentials (SOCKS and HTTP), nothing listening, and a peer that never
    answers: each flow gets a reset within the handshake timeout, with the reason in
    the access log, while a long download through a working proxy goes on and new
    flows keep working."""
    gw, up = proxied
    lab = up.lab
    holder = lab.client.popen([sys.executable, str(PEERS), "hold", "--host", lab.server.ip4,
                               "--port", str(SOURCE), "--count", "1", "--timeout", "60"])  # fmt: skip
    assert holder.stdout is not None
    assert json.loads(holder.stdout.readline()) == {"holding": 1}
    failing = {}
    started = time.monotonic()
    for name in ("silent", "badauth", "down", "webbad"):
        host = f"{name}.{DOMAIN}"
        failing[name] = lab.client.popen(
            ["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w", "%{time_total}",
             "--resolve", f"{host}:{WEB}:{lab.server.ip4}", f"http://{host}:{WEB}/index.html"],
        )  # fmt: skip
    # while the silent proxy holds its flow, a working one answers at once
    good_start = time.monotonic()
    out = curl(lab, "www")
    assert (out.returncode, out.stdout) == (0, PAGE), out.stderr
    assert time.monotonic() - good_start < HANDSHAKE
    results = {}
    for name, proc in failing.items():
        stdout, stderr = proc.communicate(timeout=30)
        results[name] = (proc.returncode, float(stdout or 0), stderr)
    for name, (code, seconds, stderr) in results.items():
        # 56: "Recv failure: Connection reset by peer", 52: empty reply
        assert code in (52, 56), (name, code, stderr)
        if name == "silent":
            assert HANDSHAKE - 0.2 <= seconds < HANDSHAKE + 2.0, (name, seconds)
        else:
            assert seconds < 1.5, (name, seconds)
    assert time.monotonic() - started < HANDSHAKE + 10
    socks = f"socks proxy {lab.server.ip4}"
    reasons = {
        # microsocks answers status 2 (its "not allowed"); any non-zero status fails
        "badauth": f"{socks}:{SOCKS_AUTH}: authentication failed for user '{USER}' (RFC 1929 status 2)",
        "down": f"{socks}:{DOWN}: connect to {lab.server.ip4}:{DOWN} failed: Connection refused",
        "silent": f"{socks}:{SILENT}: no answer within {HANDSHAKE:g}s (policy.handshake)",
        # tinyproxy 1.11 answers a bad Proxy-Authorization with 401, not 407
        "webbad": f"http proxy {lab.server.ip4}:{TINYPROXY_AUTH}: CONNECT webbad.{DOMAIN}:{WEB} "
                  "refused: 401 Unauthorized",
    }  # fmt: skip
    for name, reason in reasons.items():
        line = access_line(gw, f"[{name}.{DOMAIN}]")
        assert line.endswith(reason), line
    assert holder.poll() is None  # the long flow through the proxy is untouched
    holder.kill()
    holder.wait(5)


def dante_gateway_config() -> str:
    return f"""
[log]
level = "debug"
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = {TPROXY_PORT}
network = ["tcp", "udp"]
[[outbounds]]
tag = "direct"
type = "direct"
mark = {PROXY_MARK}
[[outbounds]]
tag = "dante"
type = "socks"
server = "{ServerNode.ip4}:{DANTE}"
mark = {PROXY_MARK}
[[outbounds]]
tag = "web"
type = "http"
server = "{ServerNode.ip4}:{TINYPROXY}"
[policy]
udp_idle = "1s"
grace = "2s"
[[routing.rules]]
network = "udp"
port = "53"
outbound = "dante"
[[routing.rules]]
network = "udp"
port = "54"
outbound = "web"
"""


@pytest.mark.parametrize("family", [4, 6])
def test_dig_through_a_socks5_udp_association(lab: Lab, make_gateway: object, family: int) -> None:
    """UDP TPROXY -> trio-tproxy -> UDP ASSOCIATE at danted -> dnsmasq, and back to the
    client from the address it asked."""
    s = lab.server
    danted = s.popen(["danted", "-f", str(dante_conf(s)), "-N", "1", "-p", str(s.workdir / "danted.pid")],
                     stdout=(s.workdir / "danted.log").open("w"), stderr=subprocess.STDOUT)  # fmt: skip
    wait_listening(s, DANTE, process=danted)
    queries = start_dnsmasq(s, f"/{DOMAIN}/{s.ip4}")
    gw = make_gateway(dante_gateway_config())  # type: ignore[operator]
    dns_ip = s.ip4 if family == 4 else s.ip6
    for name in ("www", "auth"):  # two queries: two client ports, two sessions
        out = lab.client.run(["dig", "+time=5", "+tries=1", "+short", f"@{dns_ip}",
                              f"{name}.{DOMAIN}", "A"], timeout=30)  # fmt: skip
        assert out.stdout.strip() == s.ip4, out.stdout
    # dnsmasq was asked by danted (the server's own address), not by the gateway
    log = queries.read_text()
    for name in ("www", "auth"):
        assert f"query[A] {name}.{DOMAIN} from {dns_ip}" in log, log
    shown = dns_ip if family == 4 else f"[{dns_ip}]"
    gw.proxy.wait_for(f"-> {shown}:53 udp", count=2)  # logged when each session idles out
    lines = [ln for ln in gw.proxy.access_lines() if f"-> {shown}:53 udp" in ln]
    assert all("-> dante (rule #0)" in ln and "datagrams=1/1" in ln for ln in lines), lines


def test_http_outbound_refuses_udp(lab: Lab, make_gateway: object) -> None:
    s = lab.server
    queries = start_dnsmasq(s, f"/{DOMAIN}/{s.ip4}", port=54)
    gw = make_gateway(dante_gateway_config())  # type: ignore[operator]
    out = lab.client.run(["dig", "+time=1", "+tries=1", "-p", "54", f"@{s.ip4}", f"www.{DOMAIN}"],
                         check=False, timeout=30)  # fmt: skip
    assert "timed out" in out.stdout
    gw.proxy.wait_for("outbound 'web' (http) does not carry UDP")
    assert f"www.{DOMAIN}" not in queries.read_text()


def start_dnsmasq(s: ServerNode, *records: str, port: int = 53) -> Path:
    """dnsmasq on the server's addresses answering ``records`` (``/name/ip``); its query
    log is returned."""
    log = s.workdir / f"dnsmasq-{port}.log"
    process = s.popen(
        ["dnsmasq", "-d", "-k", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
         f"--listen-address={s.ip4},{s.ip6}", "--bind-interfaces", "-p", str(port), "--pid-file=",
         *(f"--address={r}" for r in records), "--log-queries", "--log-facility=-",
         "--user=root"],
        stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_listening(s, port, udp=True, process=process)
    return log


STRATEGIES = {"asis": "as_is", "any": "use_ip", "four": "use_ipv4", "six": "use_ipv6"}


def strategy_config(lab: Lab) -> str:
    outbounds = "".join(
        f'[[outbounds]]\ntag = "{name}"\ntype = "direct"\nmark = {PROXY_MARK}\n'
        f'domain_strategy = "{strategy}"\n'
        for name, strategy in STRATEGIES.items()
    )
    rules = "".join(
        f'[[routing.rules]]\ndomain = "full:{name}.dual.test"\noutbound = "{name}"\n'
        for name in STRATEGIES
    )
    return f"""
[log]
level = "debug"
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = {TPROXY_PORT}
network = ["tcp"]
[inbounds.sniffing]
enabled = true
dest_override = ["http"]
{outbounds}
[dns]
[[dns.servers]]
address = "{lab.server.ip4}"
{rules}
"""


@pytest.mark.parametrize(("name", "dial", "family"), [
    ("asis", "ip4", 4),  # the original IP, and no DNS query at all
    ("asis", "ip6", 6),
    ("any", "ip4", 6),  # both families resolved: Happy Eyeballs prefers IPv6
    ("four", "ip6", 4),  # the client dialled IPv6; the gateway goes out over IPv4
    ("six", "ip4", 6),
])  # fmt: skip
def test_direct_domain_strategy_picks_the_family(  # noqa: PLR0917
    lab: Lab, make_gateway: object, tmp_path: Path, name: str, dial: str, family: int
) -> None:
    s = lab.server
    queries = start_dnsmasq(s, f"/dual.test/{s.ip4}", f"/dual.test/{s.ip6}")
    (tmp_path / "index.html").write_text(PAGE)
    nginx = start_http_server(s, tmp_path, port=WEB)
    gw = make_gateway(strategy_config(lab))  # type: ignore[operator]
    host = f"{name}.dual.test"
    ip = getattr(s, dial)
    out = lab.client.run(
        ["curl", "-sS", "--max-time", "15", "--resolve", f"{host}:{WEB}:{ip}",
         f"http://{host}:{WEB}/index.html"], check=False, timeout=30,
    )  # fmt: skip
    assert (out.returncode, out.stdout) == (0, PAGE), out.stderr
    (entry,) = nginx.requests()
    gateway_ip = lab.gateway.wan_ip4 if family == 4 else lab.gateway.wan_ip6
    assert (entry.remote_addr, entry.server_addr) == (gateway_ip, s.ip4 if family == 4 else s.ip6)
    asked = [line for line in queries.read_text().splitlines() if f"] {host} from" in line]
    if name == "asis":
        assert asked == []
    else:
        assert asked, queries.read_text()
    assert access_line(gw, f"[{host}]").endswith("done")
