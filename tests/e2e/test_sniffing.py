"""Sniffing through the real gateway: TLS SNI and HTTP Host decide the route; server-first
protocols and silent clients are not held beyond the sniff timeout."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from netlab.servers import make_certificate, start_http_server

from .conftest import BANNER, ECHO, Gateway, proxy_config, start_peer

pytestmark = pytest.mark.netns

SNIFF_TIMEOUT = 1.5


def sniffing_gateway(make_gateway: Callable[..., Gateway], silent_block_ip: str) -> Gateway:
    sniffing = (f'[inbounds.sniffing]\nenabled = true\ntimeout = "{SNIFF_TIMEOUT}s"\n')
    rules = f"""
[[routing.rules]]
domain = ["full:blocked.test", "domain:ads.test"]
outbound = "block"
[[routing.rules]]
ip = ["{silent_block_ip}"]
outbound = "block"
"""
    config = proxy_config(policy="").replace('network = ["tcp"]\n', 'network = ["tcp"]\n' + sniffing)
    return make_gateway(config + rules)


def test_tls_routed_by_sni(make_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    gateway = sniffing_gateway(make_gateway, "10.77.3.2")
    lab = gateway.lab
    (tmp_path / "index.html").write_text("tls ok\n")
    cert = make_certificate(lab.server.workdir, ("allowed.test", "blocked.test"))
    server = start_http_server(lab.server, tmp_path, port=8443, tls=cert)

    def curl(name: str) -> tuple[int, str, float]:
        start = time.monotonic()
        out = lab.client.run(["curl", "-sS", "--max-time", "10", "--cacert", str(cert.path),
                              "--resolve", f"{name}:8443:{lab.server.ip4}",
                              f"https://{name}:8443/index.html"], check=False)  # fmt: skip
        return out.returncode, out.stdout, time.monotonic() - start

    code, body, seconds = curl("allowed.test")
    assert (code, body) == (0, "tls ok\n")
    assert seconds < SNIFF_TIMEOUT  # the ClientHello decided at once, no timeout spent
    code, body, seconds = curl("blocked.test")
    assert code != 0 and body == ""
    assert seconds < SNIFF_TIMEOUT + 2
    assert len(server.requests()) == 1  # only the allowed name reached nginx
    log = gateway.proxy.wait_for("trio_tproxy.access", count=2)
    assert "[allowed.test] tcp/tls tproxy-in -> direct (default)" in log
    assert "[blocked.test] tcp/tls tproxy-in -> block (rule #0)" in log


@pytest.mark.parametrize("family", [4, 6])
def test_http_routed_by_host(make_gateway: Callable[..., Gateway], tmp_path: Path, family: int) -> None:
    gateway = sniffing_gateway(make_gateway, "10.77.3.2")
    lab = gateway.lab
    (tmp_path / "index.html").write_text("http ok\n")
    start_http_server(lab.server, tmp_path, port=8080)
    ip = lab.server.ip4 if family == 4 else f"[{lab.server.ip6}]"

    def status(host: str) -> str:
        return lab.client.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                               "--max-time", "10", "-H", f"Host: {host}",
                               f"http://{ip}:8080/index.html"], check=False).stdout  # fmt: skip

    assert status("www.example.test") == "200"
    assert status("x.ads.test:8080") == "000"  # block response "none": closed at once
    log = gateway.proxy.wait_for("trio_tproxy.access", count=2)
    assert "[www.example.test] tcp/http1 tproxy-in -> direct" in log
    assert "[x.ads.test] tcp/http1 tproxy-in -> block (rule #0)" in log


def test_server_first_protocol_is_not_delayed(make_gateway: Callable[..., Gateway]) -> None:
    gateway = sniffing_gateway(make_gateway, "10.77.3.2")
    lab = gateway.lab
    start_peer(lab.server, "banner", 25)  # SMTP: the server speaks first
    code = (
        "import socket,time,sys\n"
        "t=time.monotonic(); s=socket.create_connection((sys.argv[1],int(sys.argv[2])),10)\n"
        "print(s.recv(100).decode().strip(), round(time.monotonic()-t,3))\n"
    )
    out = lab.client.run([sys.executable, "-c", code, lab.server.ip4, "25"]).stdout.split()
    assert out[:2] == ["220", "banner.test"]
    assert float(out[-1]) < SNIFF_TIMEOUT / 3
    # On a port not known as server-first, the banner waits at most the sniff timeout.
    out = lab.client.run([sys.executable, "-c", code, lab.server.ip4, str(BANNER)]).stdout.split()
    assert out[:2] == ["220", "banner.test"]
    assert SNIFF_TIMEOUT * 0.8 < float(out[-1]) < SNIFF_TIMEOUT + 1.0


def test_silent_client_is_routed_by_ip_after_the_timeout(make_gateway: Callable[..., Gateway]) -> None:
    lab_ip = "10.77.3.2"
    gateway = sniffing_gateway(make_gateway, lab_ip)
    lab = gateway.lab
    assert lab_ip in lab.server.extra_ip4
    code = (
        "import socket,time,sys\n"
        "t=time.monotonic(); s=socket.create_connection((sys.argv[1],int(sys.argv[2])),10)\n"
        "s.settimeout(10)\n"
        "try:\n  d=s.recv(100); r='eof' if not d else 'data'\n"
        "except ConnectionResetError: r='reset'\n"
        "print(r, round(time.monotonic()-t,3))\n"
    )
    result, seconds = lab.client.run([sys.executable, "-c", code, lab_ip, str(ECHO)]).stdout.split()
    assert result in ("eof", "reset")
    assert SNIFF_TIMEOUT * 0.8 < float(seconds) < SNIFF_TIMEOUT + 1.5
    log = gateway.proxy.wait_for("trio_tproxy.access")
    assert f"-> {lab_ip}:{ECHO} tcp tproxy-in -> block (rule #1)" in log


def test_sniffed_bytes_are_replayed_intact(make_gateway: Callable[..., Gateway]) -> None:
    gateway = sniffing_gateway(make_gateway, "10.77.3.2")
    lab = gateway.lab
    # An HTTP request head arriving in pieces (the sniffer reads them all), then a body:
    # the echo server must get everything first, in order, byte for byte.
    code = (
        "import socket,sys,time,hashlib,os\n"
        "s=socket.create_connection((sys.argv[1],int(sys.argv[2])),10)\n"
        "head=b'POST /up HTTP/1.1\\r\\nHost: pieces.example.test\\r\\nX-Pad: '+b'a'*3000+b'\\r\\n\\r\\n'\n"
        "body=os.urandom(2_000_000); sent=head+body\n"
        "for i in range(0,len(head),700): s.sendall(head[i:i+700]); time.sleep(0.05)\n"
        "s.sendall(body); s.shutdown(socket.SHUT_WR)\n"
        "got=b''.join(iter(lambda: s.recv(65536), b''))\n"
        "print(hashlib.sha256(got).hexdigest()==hashlib.sha256(sent).hexdigest(), len(got))\n"
    )
    out = lab.client.run([sys.executable, "-c", code, lab.server.ip4, str(ECHO)], timeout=60)
    assert out.stdout.split()[0] == "True", out.stdout
    log = gateway.proxy.wait_for("trio_tproxy.access")
    assert "[pieces.example.test] tcp/http1" in log
