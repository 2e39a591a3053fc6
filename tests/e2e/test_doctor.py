"""`trio-tproxy doctor` in the namespace lab: all ✔ on a working gateway, then each
broken item named with its fix (and the fix applied makes it ✔ again)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from netlab import Lab, Netns
from netlab.proxy import ProxyProcess

from .conftest import ECHO, PROXY_MARK, TPROXY_PORT, run_client
from .test_udp_gateway import start_udp_server, udp_peer

pytestmark = pytest.mark.netns

FAKE_DNS = Path(__file__).parents[1] / "dns" / "fake_dns.py"
UDP_ECHO = 9100


def gateway_config(lab: Lab, max_connections: int = 256) -> str:
    return f"""
[log]
level = "debug"
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = {TPROXY_PORT}
[[outbounds]]
tag = "direct"
type = "direct"
mark = {PROXY_MARK}
[dns]
listen = ["{lab.gateway.lan_ip4}:53"]
[[dns.servers]]
address = "{lab.server.ip4}:53"
[firewall]
auto = true
lan_interfaces = ["{lab.gateway.lan_if}"]
bypass = []
[policy]
grace = "1s"
max_connections = {max_connections}
"""


def doctor(ns: Netns, config: Path) -> tuple[int, list[str]]:
    argv = [sys.executable, "-m", "trio_tproxy", "doctor", str(config)]
    result = ns.run(argv, check=False, timeout=60)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr == "", result.stderr
    return result.returncode, result.stdout.splitlines()


def only(lines: list[str], mark: str) -> list[str]:
    return [line for line in lines if line.startswith(mark)]


def start_dns(ns: Netns, listen: str) -> subprocess.Popen[str]:
    proc = ns.popen([sys.executable, str(FAKE_DNS), "--listen", f"{listen}:53",
                     "--record", "example.com=A:10.77.2.2"])  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening"
    return proc


def relays(lab: Lab) -> None:
    for host in (lab.server.ip4, lab.server.ip6):
        tcp = run_client(lab.client, "bulk", host, ECHO, size=20_000, timeout=10)
        assert tcp["intact"], tcp
        udp = udp_peer(lab.client, "echo", host=host, port=UDP_ECHO, count=3, size=100)
        assert udp["ok"] == 3 and udp["intact"], udp


def test_doctor_on_a_working_gateway_and_each_broken_item(lab: Lab) -> None:
    dns = start_dns(lab.server, lab.server.ip4)
    start_udp_server(lab.server, UDP_ECHO, [lab.server.ip4, lab.server.ip6])
    proxy = ProxyProcess(lab.gateway, gateway_config(lab))
    proxy.wait_ready()
    config = proxy.config_path
    lan = lab.gateway.lan_if

    code, lines = doctor(lab.gateway, config)
    assert code == 0 and lines == only(lines, "✔"), lines
    for expected in (
        "✔ kernel: nft accepts the socket and tproxy expressions (IPv4, IPv6)",
        "✔ policy routing IPv4: ip rule fwmark 1 lookup 100 (priority ",
        "✔ policy routing IPv6: local default dev lo in table 100",
        "✔ nft table inet trio_tproxy: diverts udp to port 12345",
        "✔ forwarding: net.ipv4.ip_forward = 1",
        f"✔ rp_filter {lan}: off (0)",
        "✔ inbound 'tproxy-in': listening on tcp port 12345 (pid ",
        "✔ dns.listen: listening on udp port 53 (pid ",
        f"✔ gateway process {proxy.pid}: capabilities CAP_NET_ADMIN, CAP_NET_RAW, ",
        f"✔ gateway process {proxy.pid}: open-file limit ",
        f"✔ DNS server udp://{lab.server.ip4}:53: replied in ",
    ):
        assert any(line.startswith(expected) for line in lines), (expected, lines)

    # strict rp_filter: advice, not a failure -- and TPROXY still works with it
    lab.gateway.run(["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=1",
                     f"net.ipv4.conf.{lan}.rp_filter=1"])  # fmt: skip
    code, lines = doctor(lab.gateway, config)
    assert code == 0, lines
    assert only(lines, "⚠") == [
        f"⚠ rp_filter {lan}: strict (1); TPROXY worked with it in our tests, but if diverted "
        f"traffic is dropped, make it loose — fix: sysctl -w net.ipv4.conf.all.rp_filter=2 "
        f"net.ipv4.conf.{lan}.rp_filter=2"
    ], lines
    relays(lab)
    lab.gateway.run(["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0",
                     f"net.ipv4.conf.{lan}.rp_filter=0"])  # fmt: skip

    # the ip rule removed: named, and its fix makes it whole again
    lab.gateway.run(["ip", "-4", "rule", "del", "fwmark", "1", "lookup", "100"])
    code, lines = doctor(lab.gateway, config)
    fix = "ip -4 rule add fwmark 1 lookup 100"
    assert code == 1
    assert only(lines, "✘") == [
        f"✘ policy routing IPv4: no ip rule fwmark 1 lookup 100 — fix: {fix}"
    ]
    lab.gateway.run(fix.split())
    assert doctor(lab.gateway, config)[0] == 0

    # the DNS server unreachable
    dns.kill()
    dns.wait()
    code, lines = doctor(lab.gateway, config)
    assert code == 1
    failed = only(lines, "✘")
    assert len(failed) == 1 and failed[0].startswith(
        f"✘ DNS server udp://{lab.server.ip4}:53: no reply"
    ), lines
    assert failed[0].endswith(
        f" — fix: check the path: ip route get {lab.server.ip4} (dns.servers[0])"
    )

    # the gateway stopped (firewall.auto takes its table and rules along)
    assert proxy.stop() == 0
    code, lines = doctor(lab.gateway, config)
    assert code == 1
    start = f"systemctl start trio-tproxy (or: trio-tproxy run {config})"
    for where, proto, port in (("inbound 'tproxy-in'", "tcp", TPROXY_PORT),
                               ("inbound 'tproxy-in'", "udp", TPROXY_PORT),
                               ("dns.listen", "udp", 53), ("dns.listen", "tcp", 53)):  # fmt: skip
        assert (f"✘ {where}: nothing listens on {proto} port {port}: is the gateway running? "
                f"— fix: {start}") in lines, lines  # fmt: skip
    assert (
        f"✘ nft table inet trio_tproxy: missing — fix: trio-tproxy firewall apply {config}" in lines
    )
    assert not any(line.startswith("✔ gateway process") for line in lines)


def test_doctor_names_a_low_open_file_limit(lab: Lab) -> None:
    proxy = ProxyProcess(lab.gateway, gateway_config(lab, max_connections=4096).replace(
        f'[[dns.servers]]\naddress = "{lab.server.ip4}:53"\n', ""))  # fmt: skip
    proxy.wait_ready()
    subprocess.run(["prlimit", "--pid", str(proxy.pid), "--nofile=1024:1024"], check=True)
    code, lines = doctor(lab.gateway, proxy.config_path)
    assert code == 1
    assert only(lines, "✘") == [
        f"✘ gateway process {proxy.pid}: open-file limit 1024, but policy.max_connections = 4096 "
        "needs 8256 — fix: LimitNOFILE=11328 in its unit (trio-tproxy service print), then "
        "systemctl restart trio-tproxy"
    ], lines
