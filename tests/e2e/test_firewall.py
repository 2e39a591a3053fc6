"""`trio-tproxy firewall` on the real kernel path: a client namespace behind a gateway
namespace whose diversion comes from the config, with real servers behind it.

The lab lives in private ranges (10.77/16, fd77::/16), so every config here names its
bypass explicitly: the server's second address (10.77.3.2, fd77:3::2) is bypassed, its
others are divertible.  A flow the proxy relayed reaches the server from the gateway's
WAN address; a bypassed one from the client's own address.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from netlab import Lab, Netns
from netlab.proxy import ProxyProcess
from netlab.servers import HttpServer, start_http_server, wait_listening

pytestmark = pytest.mark.netns

PORT = 12345
MARK = 255
HTTP = 8080
UDP_ECHO = 5300
LISTENER = Path(__file__).parent.parent / "netlab" / "transparent_listener.py"
POLICY = "ip -4 rule; ip -6 rule; ip -4 route show table all; ip -6 route show table all"

# A UDP server answering each datagram with the address it came from (one JSON line
# per datagram on stdout too); exits after 30 s without one.  One socket per address:
# a reply must leave from the address that was asked (a wildcard socket would answer
# from the primary address, which the asking connected socket ignores).
ECHO_SERVER = """
import json, select, socket, sys
socks = []
for address in sys.argv[2:]:
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((address, int(sys.argv[1])))
    socks.append(s)
print("listening", flush=True)
while True:
    ready, _, _ = select.select(socks, [], [], 30)
    if not ready:
        break
    for s in ready:
        data, peer = s.recvfrom(2048)
        answer = json.dumps({"peer": peer[0]})
        print(answer, flush=True)
        s.sendto(answer.encode(), peer)
"""
# Ask once from a connected socket (so only a reply from HOST:PORT counts); prints the
# reply's JSON, or {"reply": null} after the timeout.
ASK = """
import json, socket, sys
host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(timeout)
s.connect((host, port))
s.send(b"ping")
try:
    print(s.recv(2048).decode())
except (TimeoutError, ConnectionRefusedError):
    print(json.dumps({"reply": None}))
"""


def config(lab: Lab, firewall: str = "", *, bypass: str | None = None,
           network: str = '["tcp", "udp"]') -> str:  # fmt: skip
    s = lab.server
    if bypass is None:
        bypass = f'["{s.extra_ip4[1]}", "{s.extra_ip6[1]}", "10.77.1.0/24", "fd77:1::/64"]'
    return f"""
[log]
level = "debug"
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = {PORT}
network = {network}
mark = {MARK}
[[outbounds]]
tag = "direct"
type = "direct"
mark = {MARK}
[policy]
grace = "1s"
udp_idle = "1s"    # a UDP session's access line is written when it idles out
[firewall]
lan_interfaces = ["{lab.gateway.lan_if}"]
bypass = {bypass}
{firewall}
"""


def write(ns: Netns, text: str, name: str = "fw.toml") -> Path:
    path = ns.workdir / name
    path.write_text(text)
    return path


def firewall(ns: Netns, action: str, path: Path, *extra: str) -> str:
    argv = [sys.executable, "-m", "trio_tproxy", "firewall", action, *extra, str(path)]
    return ns.run(argv, timeout=30).stdout


def state(ns: Netns) -> tuple[str, str]:
    return ns.run(["nft", "list", "ruleset"]).stdout, ns.run(["sh", "-c", POLICY]).stdout


def url(host: str, path: str = "/hello.txt") -> str:
    return f"http://[{host}]:{HTTP}{path}" if ":" in host else f"http://{host}:{HTTP}{path}"


def curl(ns: Netns, host: str, *, max_time: float = 10, prefix: tuple[str, ...] = ()) -> str:
    """The body, or "" when the request failed."""
    argv = [*prefix, "curl", "-sS", "--max-time", str(max_time), url(host)]
    return ns.run(argv, check=False, timeout=max_time + 10).stdout


def ask(ns: Netns, host: str, port: int, timeout: float = 5) -> dict[str, object]:
    out = ns.run([sys.executable, "-c", ASK, host, str(port), str(timeout)], timeout=timeout + 10)
    parsed: dict[str, object] = json.loads(out.stdout)
    return parsed


@pytest.fixture
def http(lab: Lab, tmp_path: Path) -> HttpServer:
    (tmp_path / "hello.txt").write_text("hello\n")
    return start_http_server(lab.server, tmp_path, port=HTTP)


@pytest.fixture
def udp_echo(lab: Lab) -> Iterator[subprocess.Popen[str]]:
    s = lab.server
    addresses = [s.ip4, s.ip6, s.extra_ip4[1], s.extra_ip6[1]]
    process = s.popen([sys.executable, "-c", ECHO_SERVER, str(UDP_ECHO), *addresses])
    assert process.stdout is not None and process.stdout.readline() == "listening\n"
    yield process
    process.kill()
    process.wait(5)


def seen_by(server: HttpServer) -> list[str]:
    return [entry.remote_addr for entry in server.requests()]


@pytest.mark.parametrize("family", [4, 6])
def test_apply_then_tcp_is_proxied_and_bypassed_destinations_are_not(
    lab: Lab, http: HttpServer, family: int
) -> None:
    gw, s = lab.gateway, lab.server
    path = write(gw, config(lab))
    before = state(gw)
    assert firewall(gw, "apply", path).startswith("applied: table inet trio_tproxy; ")
    applied = state(gw)
    assert firewall(gw, "apply", path).startswith("applied: ")
    assert state(gw) == applied  # apply twice = once
    proxy = ProxyProcess(gw, config(lab))
    proxy.wait_ready()
    diverted, bypassed = (s.ip4, s.extra_ip4[1]) if family == 4 else (s.ip6, s.extra_ip6[1])
    client, wan = (lab.client.ip4, gw.wan_ip4) if family == 4 else (lab.client.ip6, gw.wan_ip6)
    assert curl(lab.client, diverted) == "hello\n"
    assert curl(lab.client, bypassed) == "hello\n"
    assert seen_by(http) == [wan, client]  # relayed by the proxy; forwarded by the kernel
    (line,) = proxy.access_lines()
    assert f"{diverted}{']' if family == 6 else ''}:{HTTP}" in line
    assert proxy.stop() == 0
    assert firewall(gw, "remove", path).startswith("removed: table inet trio_tproxy, ")
    assert state(gw) == before


def test_the_gateways_own_services_stay_reachable(lab: Lab, tmp_path: Path) -> None:
    gw = lab.gateway
    (tmp_path / "hello.txt").write_text("hello\n")
    start_http_server(gw, tmp_path, port=HTTP)
    echo = gw.popen([sys.executable, "-c", ECHO_SERVER, "53", gw.lan_ip4, gw.lan_ip6])  # "DNS"
    assert echo.stdout is not None and echo.stdout.readline() == "listening\n"
    # fail-closed and no proxy listening: still nothing for the gateway itself is dropped
    firewall(gw, "apply", write(gw, config(lab, "fail_closed = true", bypass="[]")))
    for host in (gw.lan_ip4, gw.lan_ip6):
        assert curl(lab.client, host, max_time=5) == "hello\n"
        assert ask(lab.client, host, 53) == {"peer": lab.client.ip4 if "." in host else lab.client.ip6}


@pytest.mark.parametrize("family", [4, 6])
def test_udp_is_diverted_with_its_original_destination_and_bypass_goes_direct(
    lab: Lab, udp_echo: subprocess.Popen[str], family: int
) -> None:
    # The kernel path alone (a transparent listener instead of trio-tproxy, which
    # test_udp_through_the_proxy runs): the original destination arrives intact.
    gw, s = lab.gateway, lab.server
    firewall(gw, "apply", write(gw, config(lab)))
    listener = gw.popen([sys.executable, str(LISTENER), "udp-tproxy", str(PORT), "1"])
    wait_listening(gw, PORT, udp=True, process=listener)
    diverted, bypassed = (s.ip4, s.extra_ip4[1]) if family == 4 else (s.ip6, s.extra_ip6[1])
    client = lab.client.ip4 if family == 4 else lab.client.ip6
    answer = ask(lab.client, diverted, 53)
    assert answer["original_dst"] == [diverted, 53]
    assert ask(lab.client, bypassed, UDP_ECHO) == {"peer": client}  # straight to the server
    listener.wait(10)


def test_udp_through_the_proxy(lab: Lab, udp_echo: subprocess.Popen[str]) -> None:
    gw, s = lab.gateway, lab.server
    proxy = ProxyProcess(gw, config(lab, "auto = true"))
    proxy.wait_ready()
    assert ask(lab.client, s.ip4, UDP_ECHO) == {"peer": gw.wan_ip4}  # relayed by the proxy
    assert ask(lab.client, s.ip6, UDP_ECHO) == {"peer": gw.wan_ip6}
    for bypassed, client in ((s.extra_ip4[1], lab.client.ip4), (s.extra_ip6[1], lab.client.ip6)):
        assert ask(lab.client, bypassed, UDP_ECHO) == {"peer": client}  # forwarded
    log = proxy.wait_for(f":{UDP_ECHO} udp", count=2)
    assert f"-> {s.ip4}:{UDP_ECHO} udp" in log and f"-> [{s.ip6}]:{UDP_ECHO} udp" in log
    assert proxy.stop() == 0
    assert len(proxy.access_lines()) == 2


def test_local_mode_proxies_the_gateways_own_traffic_without_looping(
    lab: Lab, http: HttpServer, udp_echo: subprocess.Popen[str]
) -> None:
    gw, s = lab.gateway, lab.server
    # The LAN is NOT bypassed here: replies of the proxy's transparent sockets to the
    # client must still go back to it (ct direction reply), not into the proxy again.
    text = config(lab, 'mode = "local"\nskip_users = ["nobody"]',
                  bypass=f'["{s.extra_ip4[1]}", "{s.extra_ip6[1]}"]')  # fmt: skip
    firewall(gw, "apply", write(gw, text))
    proxy = ProxyProcess(gw, text)
    proxy.wait_ready()
    for host in (s.ip4, s.ip6):
        assert curl(gw, host) == "hello\n"  # the gateway's own curl ...
    log = proxy.wait_for("trio_tproxy.access", count=2)
    assert f"{gw.wan_ip4}:" in log and f"-> {s.ip4}:{HTTP}" in log  # ... went through the proxy
    assert f"[{gw.wan_ip6}]:" in log and f"-> [{s.ip6}]:{HTTP}" in log
    assert len(proxy.access_lines()) == 2  # once each: the proxy's upstream did not loop
    assert seen_by(http) == [gw.wan_ip4, gw.wan_ip6]
    # skip_users: nobody's traffic is not diverted (nobody can run curl, not python)
    assert curl(gw, s.ip4, prefix=("setpriv", "--reuid=nobody", "--regid=nogroup",
                                   "--clear-groups")) == "hello\n"  # fmt: skip
    assert curl(lab.client, s.ip4) == "hello\n"  # the LAN is diverted as ever
    proxy.wait_for("trio_tproxy.access", count=3)
    lines = proxy.access_lines()
    assert len(lines) == 3 and f"{lab.client.ip4}:" in lines[2]
    assert len(seen_by(http)) == 4
    # the gateway's own UDP goes through the proxy too; the bypass does not
    for host in (s.ip6, s.extra_ip6[1]):
        assert ask(gw, host, UDP_ECHO) == {"peer": gw.wan_ip6}
    proxy.wait_for(f"-> [{s.ip6}]:{UDP_ECHO} udp")
    assert proxy.stop() == 0
    assert len(proxy.access_lines()) == 4


def test_fail_closed_drops_while_the_proxy_is_down_and_passes_when_it_is_back(
    lab: Lab, http: HttpServer, udp_echo: subprocess.Popen[str]
) -> None:
    gw, s, client = lab.gateway, lab.server, lab.client
    # Control: without fail_closed, a missing listener lets the traffic through.
    firewall(gw, "apply", write(gw, config(lab), "open.toml"))
    assert curl(client, s.ip4, max_time=5) == "hello\n"
    assert seen_by(http) == [client.ip4]  # the leak fail_closed is there to stop
    text = config(lab, "fail_closed = true")
    firewall(gw, "apply", write(gw, text))
    for host in (s.ip4, s.ip6):
        assert curl(client, host, max_time=2) == ""
        assert ask(client, host, UDP_ECHO, timeout=2) == {"reply": None}
    assert ask(client, s.extra_ip4[1], UDP_ECHO) == {"peer": client.ip4}  # bypass: as ever
    assert seen_by(http) == [client.ip4]  # nothing new got through
    proxy = ProxyProcess(gw, text)
    proxy.wait_ready()
    assert curl(client, s.ip4) == "hello\n"
    assert curl(client, s.ip6) == "hello\n"
    assert seen_by(http) == [client.ip4, gw.wan_ip4, gw.wan_ip6]
    assert ask(client, s.ip4, UDP_ECHO) == {"peer": gw.wan_ip4}
    assert proxy.stop() == 0
    assert curl(client, s.ip4, max_time=2) == ""
    assert ask(client, s.ip6, UDP_ECHO, timeout=2) == {"reply": None}
    assert len(seen_by(http)) == 3
    udp_echo.kill()
    lines = udp_echo.communicate(timeout=5)[0].splitlines()
    # the bypassed query and the proxied one, nothing while the proxy was down
    assert lines == [json.dumps({"peer": client.ip4}), json.dumps({"peer": gw.wan_ip4})]


def test_run_with_auto_applies_removes_and_cleans_up_after_a_killed_run(
    lab: Lab, http: HttpServer
) -> None:
    gw, s = lab.gateway, lab.server
    before = state(gw)
    text = config(lab, "auto = true")
    proxy = ProxyProcess(gw, text)
    proxy.wait_ready()
    applied = state(gw)
    assert "table inet trio_tproxy {" in applied[0]
    assert curl(lab.client, s.ip4) == "hello\n"
    assert seen_by(http) == [gw.wan_ip4]
    assert proxy.stop() == 0
    assert "firewall removed: table inet trio_tproxy" in proxy.log()
    assert state(gw) == before
    # A run killed outright leaves its rules behind ...
    killed = ProxyProcess(gw, text, name="killed")
    killed.wait_ready()
    killed.signal(signal.SIGKILL)
    killed.process.wait(10)
    assert state(gw) == applied
    # ... and the next start clears them, then applies its own once.
    again = ProxyProcess(gw, text, name="again")
    again.wait_ready()
    assert "left by an earlier run; removing them" in again.log()
    assert state(gw) == applied
    assert curl(lab.client, s.ip6) == "hello\n"
    assert again.stop() == 0
    assert state(gw) == before


def test_the_iptables_script_works_the_same(lab: Lab, http: HttpServer) -> None:
    gw, s, client = lab.gateway, lab.server, lab.client
    before = state(gw)[1]
    script = firewall(gw, "print", write(gw, config(lab)), "--iptables")
    gw.run(["sh", "-e", str(write(gw, script, "iptables.sh"))], timeout=30)
    proxy = ProxyProcess(gw, config(lab))
    proxy.wait_ready()
    for host in (s.ip4, s.ip6, s.extra_ip4[1], s.extra_ip6[1]):
        assert curl(client, host) == "hello\n"
    assert seen_by(http) == [gw.wan_ip4, gw.wan_ip6, client.ip4, client.ip6]
    assert len(proxy.access_lines()) == 2
    assert proxy.stop() == 0
    # iptables' TPROXY drops what no listener claims: fail-closed by nature
    assert curl(client, s.ip4, max_time=2) == ""
    assert len(seen_by(http)) == 4
    tail = script[script.index("# To remove all of it:\n") :].splitlines()[1:]
    removal = "\n".join(line.removeprefix("#   ") for line in tail)
    gw.run(["sh", "-e", str(write(gw, removal, "remove.sh"))], timeout=30)
    assert state(gw)[1] == before
    saved = gw.run(["sh", "-c", "iptables-save; ip6tables-save"]).stdout
    assert "trio_tproxy" not in saved and "-A " not in saved


def test_a_reload_re_applies_a_changed_firewall_at_once(lab: Lab, http: HttpServer) -> None:
    gw, s = lab.gateway, lab.server
    before = state(gw)
    text = config(lab, "auto = true")
    proxy = ProxyProcess(gw, text)
    proxy.wait_ready()
    assert curl(lab.client, s.extra_ip4[1]) == "hello\n"
    assert seen_by(http) == [lab.client.ip4]  # bypassed: forwarded by the kernel
    # The same config with another bypass list and table name, applied by SIGHUP.
    changed = config(lab, 'auto = true\ntable = "trio_tproxy_b"', bypass='["10.77.1.0/24"]')
    proxy.config_path.write_text(changed)
    proxy.signal(signal.SIGHUP)
    proxy.wait_for("configuration reloaded", timeout=30)
    assert proxy.log().count("firewall applied") == 2
    ruleset = state(gw)[0]
    assert "table inet trio_tproxy_b {" in ruleset and "table inet trio_tproxy {" not in ruleset
    assert curl(lab.client, s.extra_ip4[1]) == "hello\n"
    assert seen_by(http) == [lab.client.ip4, gw.wan_ip4]  # no longer bypassed: relayed
    # an unchanged [firewall] is not applied again
    proxy.config_path.write_text(changed + "\n# edited\n")
    proxy.signal(signal.SIGHUP)
    proxy.wait_for("configuration reloaded", count=2, timeout=30)
    assert proxy.log().count("firewall applied") == 2
    assert proxy.stop() == 0
    assert "firewall removed: table inet trio_tproxy_b" in proxy.log()
    assert state(gw) == before
