"""Hostile input (issue 13, proof): thousands of garbage TCP connections (random bytes,
mutated real TLS ClientHellos, immediate RSTs, half-open ones), random UDP datagrams to
random diverted ports, mutated real QUIC Initials, garbage to the hijacked DNS port.
Afterwards the gateway is alive, serves a normal request, its descriptors are back to
the baseline (+-20) and its RSS grew by less than 30 MB."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ECHO, Gateway, proxy_config
from .test_udp_gateway import BOTH

pytestmark = [pytest.mark.netns, pytest.mark.slow]

HOSTILE = Path(__file__).with_name("hostile.py")
CONFIG_EXTRA = """
[inbounds.sniffing]
enabled = true
dest_override = ["http", "tls", "quic"]
[[outbounds]]
tag = "dns-out"
type = "dns"
[[routing.rules]]
port = 53
outbound = "dns-out"
[dns]
[[dns.servers]]
address = "{server}:5353"  # nothing listens there: names fail fast, inside the lab
timeout = "1s"
"""
FD_SLACK = 20
RSS_GROWTH_MB = 30


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def normal_request(gateway: Gateway) -> None:
    result = gateway.client("many", gateway.lab.server.ip4, ECHO, count=1, size=10_000, timeout=10)
    assert result == {"ok": 1, "errors": []}, result


def test_garbage_leaves_the_gateway_serving_with_no_leak(
    make_gateway: Callable[..., Gateway],
) -> None:
    config = proxy_config(network=BOTH, policy='udp_idle = "2s"',
                          extra=CONFIG_EXTRA.format(server="10.77.2.2"))  # fmt: skip
    gateway = make_gateway(config)
    lab, proxy = gateway.lab, gateway.proxy
    assert lab.server.ip4 == "10.77.2.2"
    normal_request(gateway)  # warm: the first flow's lazy allocations are not a leak
    time.sleep(0.5)
    fds, rss = proxy.open_fds(), rss_mb(proxy.pid)
    argv = [sys.executable, str(HOSTILE), "--host", lab.server.ip4,
            "--ports", f"{ECHO},9999,443,80", "--tcp", "2000", "--udp", "3000", "--dns", "600"]  # fmt: skip
    out = lab.client.run(argv, timeout=240).stdout
    sent = json.loads(out.strip().splitlines()[-1])
    print("hostile client:", sent)
    assert proxy.process.poll() is None, proxy.log()[-3000:]
    start = time.monotonic()
    normal_request(gateway)
    served = time.monotonic() - start
    deadline = time.monotonic() + 30  # sniff timeouts, UDP idle (2 s), reply sockets
    while proxy.open_fds() > fds + FD_SLACK and time.monotonic() < deadline:
        time.sleep(0.2)
    after_fds, after_rss = proxy.open_fds(), rss_mb(proxy.pid)
    print(f"fds {fds} -> {after_fds}; RSS {rss:.1f} -> {after_rss:.1f} MB; "
          f"normal request after: {served:.2f}s")  # fmt: skip
    assert abs(after_fds - fds) <= FD_SLACK
    assert after_rss - rss < RSS_GROWTH_MB
    log = proxy.log()
    assert "Traceback" not in log and "internal error" not in log
    flows = len(proxy.access_lines())
    print(f"{flows} access lines; warnings/errors:",
          [line[24:140] for line in log.splitlines() if " WARNING " in line or " ERROR " in line])
    assert flows >= 2000  # every garbage connection was taken in and ended
    assert proxy.process.poll() is None
