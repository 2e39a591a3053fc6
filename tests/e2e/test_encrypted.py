"""The shadowsocks and trojan outbounds through the real TPROXY path, against real
servers in the server namespace: ss-server (the three AEAD methods), sing-box (the three
2022 methods), trojan-gfw (TLS with a test CA); nginx (HTTP and HTTPS) and dnsmasq
behind them.

    client --LAN-- gateway (TPROXY -> trio-tproxy) --WAN-- server (ss-server, sing-box,
                                                                trojan, nginx, dnsmasq)

Names like ss-aes128.enc.test exist only in the servers' private /etc/hosts: the client
dials the server's IP, trio-tproxy sniffs the name (HTTP Host, TLS SNI), routes by it,
and sends it to the upstream, which resolves it itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path

import attrs
import pytest

from netlab import Lab, ServerNode
from netlab.servers import TestCertificate as Certificate
from netlab.servers import make_certificate, start_http_server

from ..outbound.upstream_servers import needs_sing_box, needs_ss_server, needs_trojan, sing_box_path
from .conftest import PROXY_MARK, TPROXY_PORT, Gateway
from .test_proxies import start_dnsmasq, start_with_hosts

pytestmark = [pytest.mark.netns, needs_ss_server, needs_sing_box, needs_trojan]

DOMAIN = "enc.test"
WEB, WEB_TLS = 8080, 8443
HANDSHAKE = 2.0
BIG = 20 * 1024 * 1024
PAGE = "hello through an encrypted upstream\n"
KEY16 = base64.b64encode(bytes(range(16))).decode()
KEY32 = base64.b64encode(bytes(range(32))).decode()
# tag -> (port, method, password): ss-server serves the AEAD ones, sing-box the 2022 ones
SHADOWSOCKS = {
    "ss-aes128": (8388, "aes-128-gcm", "pw-128"),
    "ss-aes256": (8389, "aes-256-gcm", "pw-256"),
    "ss-chacha": (8390, "chacha20-ietf-poly1305", "pw-chacha"),
    "ss22-aes128": (8391, "2022-blake3-aes-128-gcm", KEY16),
    "ss22-aes256": (8392, "2022-blake3-aes-256-gcm", KEY32),
    "ss22-chacha": (8393, "2022-blake3-chacha20-poly1305", KEY32),
}
TROJAN, TROJAN_PASSWORD, DEAD = 443, "trojan-secret", 8399
# outbounds that must fail: tag -> the TOML of the outbound
FAILING = {
    "ss-badpw": 'type = "shadowsocks"\nserver = "{s}:8389"\nmethod = "aes-256-gcm"\n'
                'password = "wrong"',
    "ss-badmethod": 'type = "shadowsocks"\nserver = "{s}:8389"\nmethod = "aes-128-gcm"\n'
                    'password = "pw-256"',
    "ss22-badkey": f'type = "shadowsocks"\nserver = "{{s}}:8391"\n'
                   f'method = "2022-blake3-aes-128-gcm"\npassword = "{base64.b64encode(bytes(16)).decode()}"',
    "tj-nocert": f'type = "trojan"\nserver = "{{s}}:{TROJAN}"\npassword = "{TROJAN_PASSWORD}"\n'
                 'sni = "trojan.enc.test"',
    "ss-dead": f'type = "shadowsocks"\nserver = "{{s}}:{DEAD}"\nmethod = "aes-128-gcm"\n'
               'password = "x"',
}  # fmt: skip
UDP_ROUTES = {53: "ss-aes128", 5353: "ss22-chacha", 5354: "tj", 5355: "auto"}
# a group of encrypted members: flows name it and the member, auto[ss22-aes128]
GROUP_MEMBERS = ["ss22-aes128", "tj"]


@attrs.frozen
class Upstreams:
    lab: Lab
    cert: Certificate
    big_sha256: str


def names() -> list[str]:
    return [*SHADOWSOCKS, "tj", "auto", *FAILING]


def gateway_config(s: ServerNode, cert: Certificate) -> str:
    outbounds = ""
    for tag, (port, method, password) in SHADOWSOCKS.items():
        outbounds += (f'[[outbounds]]\ntag = "{tag}"\ntype = "shadowsocks"\nserver = "{s.ip4}:{port}"\n'
                      f'method = "{method}"\npassword = "{password}"\nmark = {PROXY_MARK}\n')  # fmt: skip
    outbounds += (f'[[outbounds]]\ntag = "tj"\ntype = "trojan"\nserver = "{s.ip4}:{TROJAN}"\n'
                  f'password = "{TROJAN_PASSWORD}"\nsni = "trojan.{DOMAIN}"\nca = "{cert.path}"\n'
                  f'mark = {PROXY_MARK}\n')  # fmt: skip
    outbounds += (f'[[outbounds]]\ntag = "auto"\ntype = "selector"\n'
                  f'outbounds = {json.dumps(GROUP_MEMBERS)}\n'
                  f'url = "http://{s.ip4}:{WEB}/index.html"\ninterval = "30s"\n')  # fmt: skip
    for tag, body in FAILING.items():
        outbounds += f'[[outbounds]]\ntag = "{tag}"\n{body.format(s=s.ip4)}\nmark = {PROXY_MARK}\n'
    rules = "".join(f'[[routing.rules]]\ndomain = "full:{tag}.{DOMAIN}"\noutbound = "{tag}"\n'
                    for tag in names())  # fmt: skip
    rules += "".join(f'[[routing.rules]]\nnetwork = "udp"\nport = "{port}"\noutbound = "{tag}"\n'
                     for port, tag in UDP_ROUTES.items())  # fmt: skip
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
dest_override = ["http", "tls"]
[[outbounds]]
tag = "direct"
type = "direct"
mark = {PROXY_MARK}
{outbounds}
[policy]
handshake = "{HANDSHAKE:g}s"
udp_idle = "1s"
grace = "2s"
{rules}
"""


def sing_box_config(s: ServerNode, path: Path) -> Path:
    inbounds = [
        {"type": "shadowsocks", "listen": s.ip4, "listen_port": port, "method": method,
         "password": password}
        for port, method, password in SHADOWSOCKS.values() if method.startswith("2022")
    ]  # fmt: skip
    path.write_text(json.dumps({"log": {"level": "warn"}, "inbounds": inbounds,
                                "outbounds": [{"type": "direct"}]}))  # fmt: skip
    return path


def trojan_config(s: ServerNode, cert: Certificate, path: Path) -> Path:
    path.write_text(json.dumps({
        "run_type": "server", "local_addr": s.ip4, "local_port": TROJAN,
        "remote_addr": s.ip4, "remote_port": WEB, "password": [TROJAN_PASSWORD],
        "log_level": 1, "ssl": {"cert": str(cert.path), "key": str(cert.key),
                                "alpn": ["http/1.1"]},
    }))  # fmt: skip
    return path


@pytest.fixture
def upstreams(lab: Lab, tmp_path: Path) -> Upstreams:
    s = lab.server
    (s.workdir / "hosts").write_text(
        "127.0.0.1 localhost\n" + "".join(f"{s.ip4} {n}.{DOMAIN}\n" for n in names())
    )
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(PAGE)
    big = os.urandom(BIG)
    (site / "big.bin").write_bytes(big)
    cert = make_certificate(s.workdir, tuple(f"{n}.{DOMAIN}" for n in ["trojan", *names()]))
    start_http_server(s, site, port=WEB)
    start_http_server(s, site, port=WEB_TLS, tls=cert)
    for port in UDP_ROUTES:
        start_dnsmasq(s, f"/{DOMAIN}/{s.ip4}", port=port)
    # ss-server's own resolver does not wait for /etc/hosts in the lab: ask dnsmasq
    for tag, (port, method, password) in SHADOWSOCKS.items():
        if not method.startswith("2022"):
            start_with_hosts(s, tag, ["ss-server", "-s", s.ip4, "-p", str(port), "-k", password,
                                      "-m", method, "-u", "-d", s.ip4], port)  # fmt: skip
    sing = sing_box_path()
    assert sing is not None
    start_with_hosts(s, "sing-box", [sing, "run", "-c", str(sing_box_config(s, s.workdir / "sb.json"))],
                     8391)  # fmt: skip
    start_with_hosts(s, "trojan", ["trojan", "-c", str(trojan_config(s, cert, s.workdir / "tj.json"))],
                     TROJAN)  # fmt: skip
    return Upstreams(lab, cert, hashlib.sha256(big).hexdigest())


@pytest.fixture
def encrypted(make_gateway: object, upstreams: Upstreams) -> tuple[Gateway, Upstreams]:
    gw = make_gateway(gateway_config(upstreams.lab.server, upstreams.cert))  # type: ignore[operator]
    return gw, upstreams


def curl(up: Upstreams, tag: str, path: str = "index.html", *, tls: bool = False,
         timeout: float = 30, extra: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    host = f"{tag}.{DOMAIN}"
    port = WEB_TLS if tls else WEB
    scheme = "https" if tls else "http"
    return ["curl", "-sS", "--max-time", str(timeout), "--cacert", str(up.cert.path),
            "--resolve", f"{host}:{port}:{up.lab.server.ip4}", *extra,
            f"{scheme}://{host}:{port}/{path}"]  # fmt: skip


def test_every_method_carries_http_https_and_a_20mb_download(
    encrypted: tuple[Gateway, Upstreams],
) -> None:
    gw, up = encrypted
    client = up.lab.client
    for tag in [*SHADOWSOCKS, "tj"]:
        out = client.run(curl(up, tag), check=False, timeout=60)
        assert (out.returncode, out.stdout) == (0, PAGE), (tag, out.stderr)
        out = client.run(curl(up, tag, tls=True), check=False, timeout=60)
        assert (out.returncode, out.stdout) == (0, PAGE), (tag, "https", out.stderr)
        start = time.monotonic()
        out = client.run(["sh", "-c", " ".join(curl(up, tag, "big.bin")) + " | sha256sum"],
                         check=False, timeout=120)  # fmt: skip
        assert out.stdout.split()[0] == up.big_sha256, (tag, out.stderr)
        print(f"{tag}: 20 MB in {time.monotonic() - start:.2f}s")
    out = client.run(curl(up, "auto"), check=False, timeout=60)
    assert (out.returncode, out.stdout) == (0, PAGE), ("auto", out.stderr)
    gw.proxy.wait_for(f"[auto.{DOMAIN}] tcp/http1 tproxy-in -> auto[{GROUP_MEMBERS[0]}] (rule #")
    for tag in [*SHADOWSOCKS, "tj"]:
        # trojan cannot pass the client's FIN on (TLS): its flows end by downlink_only
        gw.proxy.wait_for(f"[{tag}.{DOMAIN}]", count=3)
    lines = gw.proxy.access_lines()
    for tag in [*SHADOWSOCKS, "tj"]:
        mine = [ln for ln in lines if f"[{tag}.{DOMAIN}]" in ln]
        assert len(mine) == 3, (tag, mine)
        # trojan: nginx keeps the connection after the response; the client's FIN cannot
        # reach it through TLS, so downlink_only ends those flows
        ends = ("done", "half-closed timeout") if tag == "tj" else ("done",)
        assert all(f"-> {tag} (rule #" in ln and ln.endswith(ends) for ln in mine), mine
        assert any("tcp/tls" in ln for ln in mine) and any("tcp/http1" in ln for ln in mine)


@pytest.mark.parametrize("family", [4, 6])
def test_dig_over_udp_through_shadowsocks_and_trojan(
    encrypted: tuple[Gateway, Upstreams], family: int
) -> None:
    gw, up = encrypted
    s = up.lab.server
    dns_ip = s.ip4 if family == 4 else s.ip6
    for port, tag in UDP_ROUTES.items():
        out = up.lab.client.run(["dig", "+time=5", "+tries=1", "+short", "-p", str(port),
                                 f"@{dns_ip}", f"www.{DOMAIN}", "A"], timeout=30)  # fmt: skip
        assert out.stdout.strip() == s.ip4, (tag, out.stdout)
    shown = dns_ip if family == 4 else f"[{dns_ip}]"
    for port, tag in UDP_ROUTES.items():
        gw.proxy.wait_for(f"-> {shown}:{port} [www.{DOMAIN}] udp")  # logged when the session idles out
        (line,) = [ln for ln in gw.proxy.access_lines() if f"-> {shown}:{port} [www.{DOMAIN}] udp" in ln]
        via = f"{tag}[{GROUP_MEMBERS[0]}]" if tag == "auto" else tag
        assert f"-> {via} (rule #" in line and "datagrams=1/1" in line, line


def test_failures_are_fast_and_cost_only_their_flows(encrypted: tuple[Gateway, Upstreams]) -> None:
    """Wrong password, wrong method, wrong 2022 key, an unverifiable certificate and a
    dead server: each flow is reset within the handshake timeout with one clear line,
    while a download through a working upstream goes on intact."""
    gw, up = encrypted
    client = up.lab.client
    long_run = client.popen(["sh", "-c", " ".join(curl(up, "ss-aes128", "big.bin", timeout=60,
                                                       extra=("--limit-rate", "4M")))
                             + " | sha256sum"])  # fmt: skip
    time.sleep(0.5)
    started = time.monotonic()
    failing = {tag: client.popen([*curl(up, tag, timeout=20), "-o", "/dev/null", "-w",
                                  "%{time_total}"]) for tag in FAILING}  # fmt: skip
    good = client.run(curl(up, "ss22-aes256"), check=False, timeout=30)
    assert (good.returncode, good.stdout) == (0, PAGE), good.stderr
    for tag, proc in failing.items():
        stdout, stderr = proc.communicate(timeout=30)
        # 56: "Recv failure: Connection reset by peer", 52: empty reply
        assert proc.returncode in (52, 56), (tag, proc.returncode, stderr)
        assert float(stdout or 0) < HANDSHAKE + 1.5, (tag, stdout)
    assert time.monotonic() - started < HANDSHAKE + 10
    stdout, _ = long_run.communicate(timeout=60)
    assert stdout.split()[0] == up.big_sha256
    s = up.lab.server.ip4
    reasons = {
        "ss-badpw": "shadowsocks ss-badpw: no answer within 2s of the request (policy.handshake)"
                    " - wrong password or method? (servers stay silent then)",
        "ss-badmethod": "shadowsocks ss-badmethod: no answer within 2s",
        "ss22-badkey": "shadowsocks ss22-badkey: ",
        "tj-nocert": "trojan tj-nocert: certificate verification failed",
        "ss-dead": f"shadowsocks ss-dead: connect to {s}:{DEAD} failed: Connection refused",
    }  # fmt: skip
    for tag, reason in reasons.items():
        (line,) = [ln for ln in gw.proxy.access_lines() if f"[{tag}.{DOMAIN}]" in ln]
        assert reason in line, line
    assert "wrong password or method" in next(ln for ln in gw.proxy.access_lines()
                                          if "ss22-badkey" in ln)  # fmt: skip
    assert gw.proxy.process.poll() is None
