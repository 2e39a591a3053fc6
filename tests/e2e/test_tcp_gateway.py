"""TCP through the real TPROXY path: a client namespace, the gateway running trio-tproxy,
real servers behind it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from netlab.servers import start_http_server

from .conftest import ECHO, HALFCLOSE, PEERS, SINGLE_PROCESS, SLOW, SOURCE, Gateway, proxy_config

pytestmark = pytest.mark.netns


@pytest.mark.parametrize("family", [4, 6])
def test_http_reaches_the_original_destination(gateway: Gateway, family: int, tmp_path: Path) -> None:
    lab = gateway.lab
    (tmp_path / "index.html").write_text("hello through trio-tproxy\n")
    server = start_http_server(lab.server, tmp_path, port=8080)
    dst = lab.server.ip4 if family == 4 else f"[{lab.server.ip6}]"
    out = lab.client.run(["curl", "-sS", "--max-time", "10", f"http://{dst}:8080/index.html"])
    assert out.stdout == "hello through trio-tproxy\n"
    (entry,) = server.requests()
    # The server saw the gateway (the direct outbound's address), at the original port.
    assert entry.remote_addr == (lab.gateway.wan_ip4 if family == 4 else lab.gateway.wan_ip6)
    assert entry.server_port == 8080
    log = gateway.proxy.wait_for("trio_tproxy.access")
    want = f"{lab.client.ip4 if family == 4 else '[' + lab.client.ip6 + ']'}:"
    (line,) = [line for line in log.splitlines() if "trio_tproxy.access" in line]
    assert want in line and f"-> {dst}:8080" in line
    assert "tproxy-in -> direct (default)" in line and "done" in line


@pytest.mark.slow
@pytest.mark.parametrize("family", [4, 6])
def test_100_megabytes_each_way_arrive_intact(gateway: Gateway, family: int) -> None:
    lab = gateway.lab
    host = lab.server.ip4 if family == 4 else lab.server.ip6
    result = gateway.client("bulk", host, ECHO, size=100_000_000, timeout=120)
    assert result == {"sent": 100_000_000, "received": 100_000_000, "intact": True}
    line = gateway.proxy.wait_for("up=100000000 down=100000000")
    assert "done" in line


def test_half_close_is_passed_on(gateway: Gateway) -> None:
    result = gateway.client("halfclose", gateway.lab.server.ip4, HALFCLOSE)
    assert result == {"digest_ok": True, "body_ok": True}


@pytest.mark.parametrize("family", [4, 6])
def test_unreachable_destination_fails_fast_and_alone(gateway: Gateway, family: int) -> None:
    lab = gateway.lab
    # A long flow is running while another one fails.
    holder = lab.client.popen([sys.executable, str(PEERS), "hold", "--host", lab.server.ip4,
                               "--port", str(SOURCE), "--count", "1", "--timeout", "30"])  # fmt: skip
    assert holder.stdout is not None
    assert json.loads(holder.stdout.readline()) == {"holding": 1}
    unreachable = lab.unreachable_ip4 if family == 4 else lab.unreachable_ip6
    result = gateway.client("connect", unreachable, 80, timeout=10)
    assert result["result"] in ("reset", "eof"), result
    assert float(result["seconds"]) < 2.0  # type: ignore[arg-type]
    gateway.proxy.wait_for("failed: No route to host")
    # the other flow is still alive, and new flows work
    assert holder.poll() is None
    assert gateway.client("many", lab.server.ip4, ECHO, count=1, size=1000) == {"ok": 1, "errors": []}
    holder.kill()


def test_refused_port_resets_the_client(gateway: Gateway) -> None:
    result = gateway.client("connect", gateway.lab.server.ip4, 9999, timeout=10)
    assert result["result"] in ("reset", "eof"), result
    gateway.proxy.wait_for("failed: Connection refused")


def test_200_concurrent_connections(gateway: Gateway) -> None:
    result = gateway.client("many", gateway.lab.server.ip6, ECHO, count=200, size=200_000)
    assert result == {"ok": 200, "errors": []}
    gateway.proxy.wait_for("trio_tproxy.access", count=200)


def test_killed_clients_leave_no_leaked_descriptors(gateway: Gateway) -> None:
    lab, proxy = gateway.lab, gateway.proxy
    # Sockets are what a leaked flow would hold (idle splice pipes are a bounded pool).
    baseline = proxy.open_fds("socket:")
    holder = lab.client.popen([sys.executable, str(PEERS), "hold", "--host", lab.server.ip4,
                               "--port", str(SOURCE), "--count", "30", "--timeout", "30"])  # fmt: skip
    assert holder.stdout is not None
    assert json.loads(holder.stdout.readline()) == {"holding": 30}
    assert proxy.open_fds("socket:") >= baseline + 60  # two sockets per flow
    holder.kill()  # mid-transfer: the kernel resets its connections
    holder.wait(5)
    proxy.wait_for("trio_tproxy.access", count=30, timeout=10)
    deadline = time.monotonic() + 10
    while proxy.open_fds("socket:") > baseline and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proxy.open_fds("socket:") == baseline


def test_sigterm_drains_then_exits_zero(gateway: Gateway) -> None:
    lab, proxy = gateway.lab, gateway.proxy
    slow = lab.client.popen(["socat", "-t", "5", "-", f"TCP:{lab.server.ip4}:{SLOW}"],
                            stdin=subprocess.PIPE)  # fmt: skip
    assert slow.stdin is not None and slow.stdout is not None
    slow.stdin.write("go\n")
    slow.stdin.flush()
    assert slow.stdout.readline() == "piece 0\n"
    proxy.signal(signal.SIGTERM)
    proxy.wait_for("stopping: no new flows; 1 active flow(s)")
    # New connections are no longer accepted while the old flow drains. (With no
    # transparent listener, TPROXY lets the packet through unproxied: this one reaches
    # the echo server directly, and the proxy never sees it.)
    gateway.client("connect", lab.server.ip4, ECHO, timeout=5)
    rest = slow.stdout.read()  # the slow flow finishes within the grace period
    assert rest.endswith("piece 9\n")
    assert proxy.process.wait(10) == 0
    assert "stopped" in proxy.log()
    (only,) = proxy.access_lines()
    assert f":{SLOW} " in only and "down=80 " in only  # all ten pieces, relayed while draining
    slow.stdin.close()


def test_redirect_inbound(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(proxy_config(inbound="redirect"), redirect=True)
    for host in (gateway.lab.server.ip4, gateway.lab.server.ip6):
        assert gateway.client("many", host, ECHO, count=3, size=10_000) == {"ok": 3, "errors": []}
    log = gateway.proxy.wait_for("trio_tproxy.access", count=6)
    assert f"-> {gateway.lab.server.ip4}:{ECHO}" in log
    assert f"-> [{gateway.lab.server.ip6}]:{ECHO}" in log
    assert "redirect-in -> direct" in log


def test_connection_to_our_own_listener_is_refused(gateway: Gateway) -> None:
    lab = gateway.lab
    # Addressed to the gateway itself at the proxy port: not diverted (local
    # destination), lands on the transparent listener, and must not be dialled again.
    result = gateway.client("connect", lab.gateway.lan_ip4, 12345, timeout=5)
    assert result["result"] in ("reset", "eof"), result
    gateway.proxy.wait_for("refused: destination is one of our own listeners")
    assert gateway.proxy.process.poll() is None


@SINGLE_PROCESS  # N workers each take 1/N of the limit; the kernel spreads the clients
def test_connection_limit_refuses_only_the_excess(make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway(proxy_config(policy="max_connections = 5"))
    lab = gateway.lab
    holder = lab.client.popen([sys.executable, str(PEERS), "hold", "--host", lab.server.ip4,
                               "--port", str(SOURCE), "--count", "5", "--timeout", "30"])  # fmt: skip
    assert holder.stdout is not None
    assert json.loads(holder.stdout.readline()) == {"holding": 5}
    excess = gateway.client("connect", lab.server.ip4, ECHO, timeout=5)
    assert excess["result"] in ("reset", "eof"), excess
    gateway.proxy.wait_for("connection limit reached (policy.max_connections = 5)")
    assert holder.poll() is None  # the five established flows are untouched
    holder.kill()
    holder.wait(5)
    gateway.proxy.wait_for("trio_tproxy.access", count=5)
    assert gateway.client("many", lab.server.ip4, ECHO, count=2, size=1000) == {"ok": 2, "errors": []}


def test_sighup_reloads_rules_and_rejects_a_bad_config(gateway: Gateway) -> None:
    lab, proxy = gateway.lab, gateway.proxy
    holder = lab.client.popen([sys.executable, str(PEERS), "hold", "--host", lab.server.ip4,
                               "--port", str(SOURCE), "--count", "1", "--timeout", "30"])  # fmt: skip
    assert holder.stdout is not None
    assert json.loads(holder.stdout.readline()) == {"holding": 1}
    text = proxy.config_path.read_text()
    rule = f'[[routing.rules]]\nip = ["{lab.server.ip4}"]\nport = {ECHO}\noutbound = "block"\n'
    proxy.config_path.write_text(text + rule)
    proxy.signal(signal.SIGHUP)
    proxy.wait_for("configuration reloaded")
    blocked = gateway.client("connect", lab.server.ip4, ECHO, timeout=5)
    assert blocked["result"] in ("reset", "eof"), blocked
    proxy.wait_for("-> block (rule #0)")
    # a broken config is refused; the running one (with the block rule) stays
    proxy.config_path.write_text(text + "[dns]\ncache = 'yes'\n")
    proxy.signal(signal.SIGHUP)
    proxy.wait_for("reload rejected, keeping the running configuration")
    assert "expected true or false, got 'yes' @ $.dns.cache" in proxy.log()
    gateway.client("connect", lab.server.ip4, ECHO, timeout=5)
    proxy.wait_for("-> block (rule #0)", count=2)
    assert holder.poll() is None  # the established flow survived both reloads
    holder.kill()
