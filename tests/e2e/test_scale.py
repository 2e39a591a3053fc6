"""Scale (issue 13, proof): 9,000 idle TCP flows at once (18,000 descriptors in the
gateway, under this machine's 20,000 hard limit) with policy.max_connections = 10000,
while a normal request is served in under a second; the descriptors come back after."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ECHO, Gateway, proxy_config

pytestmark = [pytest.mark.netns, pytest.mark.slow]

SCALE_PEERS = Path(__file__).with_name("scale_peers.py")
IDLE = 9010
FLOWS = 9000
FD_SLACK = 20


def test_nine_thousand_idle_flows_and_a_request_still_served(
    make_gateway: Callable[..., Gateway],
) -> None:
    import resource

    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 2 * FLOWS + 1000:
        pytest.skip("the open-file hard limit is below 2 x 9,000 + 1,000")
    gateway = make_gateway(proxy_config(policy="max_connections = 10000"))
    lab, proxy = gateway.lab, gateway.proxy
    server = lab.server.popen([sys.executable, str(SCALE_PEERS), "serve", "--port", str(IDLE),
                               "--count", str(FLOWS), "--timeout", "300"])  # fmt: skip
    assert server.stdout is not None and server.stdout.readline().strip() == "listening"
    assert gateway.client("many", lab.server.ip4, ECHO, count=1, size=1000) == {"ok": 1, "errors": []}
    baseline = proxy.open_fds()
    holder = lab.client.popen([sys.executable, str(SCALE_PEERS), "hold", "--host", lab.server.ip4,
                               "--port", str(IDLE), "--count", str(FLOWS), "--timeout", "300"],
                              stdin=subprocess.PIPE)  # fmt: skip
    assert holder.stdout is not None and holder.stdin is not None
    opened = json.loads(holder.stdout.readline())
    assert opened.get("holding") == FLOWS, opened
    deadline = time.monotonic() + 60  # the gateway has accepted and dialled them all
    while proxy.open_fds() < baseline + 2 * FLOWS and time.monotonic() < deadline:
        time.sleep(0.2)
    held = proxy.open_fds()
    start = time.monotonic()
    result = gateway.client("many", lab.server.ip4, ECHO, count=1, size=10_000, timeout=10)
    served = time.monotonic() - start
    print(f"held {opened}; gateway fds {baseline} -> {held}; a request took {served:.3f}s "
          "(client process start included)")
    assert result == {"ok": 1, "errors": []}
    assert held >= baseline + 2 * FLOWS
    assert served < 1.0
    holder.stdin.close()  # the holder closes all of them
    assert json.loads(holder.stdout.readline()) == {"closed": FLOWS}
    deadline = time.monotonic() + 60
    while proxy.open_fds() > baseline + FD_SLACK and time.monotonic() < deadline:
        time.sleep(0.2)
    after = proxy.open_fds()
    print(f"after closing: {after} fds")
    assert after <= baseline + FD_SLACK
    assert proxy.process.poll() is None
    server.kill()
