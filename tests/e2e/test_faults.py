"""Upstream faults (issue 13, proof): a SOCKS upstream killed mid-transfer costs only the
flows through it, which are reset within 2 s, while others go on; a server's RST in the
middle of a transfer reaches the client as a RST.

A killed process's sockets are closed by the kernel: one with received data unread (the
client was sending) is reset, which is what the gateway can and must pass on; one with
nothing unread ends with a FIN, which no one can tell from an orderly end (the flow
then ends as its peer ended it). The flows here upload and download at once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from netlab.servers import wait_listening

from .conftest import ECHO, PEERS, PROXY_MARK, Gateway, proxy_config, start_peer

pytestmark = pytest.mark.netns

SOCKS = 1080
RESETTING = 9013


def watch(gateway: Gateway, host: str, count: int, timeout: float = 20, *, port: int = ECHO,
          upload: bool = True) -> subprocess.Popen[str]:  # fmt: skip
    """``count`` connections to ``port`` (the echo server: each uploads and downloads)."""
    proc = gateway.lab.client.popen([sys.executable, str(PEERS), "watch", "--host", host,
                                     "--port", str(port), "--count", str(count),
                                     "--size", str(int(upload)), "--timeout", str(timeout)])  # fmt: skip
    assert proc.stdout is not None
    assert json.loads(proc.stdout.readline()) == {"holding": count}
    return proc


def test_a_killed_socks_upstream_resets_only_its_flows(
    make_gateway: Callable[..., Gateway],
) -> None:
    extra = f"""
[[outbounds]]
tag = "proxy"
type = "socks"
server = "{{server}}:{SOCKS}"
mark = {PROXY_MARK}
[[routing.rules]]
ip = ["{{server}}"]
outbound = "proxy"
"""
    gateway = make_gateway(proxy_config(extra=extra.replace("{server}", "10.77.2.2")))
    lab = gateway.lab
    assert lab.server.ip4 == "10.77.2.2"
    socks = lab.server.popen(["microsocks", "-i", lab.server.ip4, "-p", str(SOCKS)])
    wait_listening(lab.server, SOCKS, process=socks)
    proxied = watch(gateway, lab.server.ip4, 3)  # through the SOCKS proxy
    direct = watch(gateway, lab.server.ip6, 2, timeout=3)  # direct, to the same server
    time.sleep(0.3)
    killed_at = time.monotonic()
    socks.send_signal(signal.SIGKILL)
    ends = json.loads(proxied.communicate(timeout=30)[0].strip().splitlines()[-1])["ends"]
    print("through the killed proxy:", [(read, round(at - killed_at, 3), sent, round(when - killed_at, 3))
                                        for read, at, sent, when in ends])  # fmt: skip
    for read, at, sent, when in ends:
        # Reset at once; or, after the dead proxy's FIN was passed on, reset at the next
        # data the client sends: Linux reports a RST in CLOSE_WAIT as EPIPE ("broken";
        # without a RST, sending after the peer's FIN just works).
        reset_at_once = read == "reset" and at - killed_at < 2.0
        reset_after_fin = read == "eof" and sent in ("reset", "broken") and when - killed_at < 2.0
        assert reset_at_once or reset_after_fin, ends
    others = json.loads(direct.communicate(timeout=30)[0].strip().splitlines()[-1])["ends"]
    assert [(read, sent) for read, _, sent, _ in others] == [("open", "open")] * 2, others


@pytest.mark.parametrize("family", [4, 6])
def test_a_server_reset_mid_transfer_reaches_the_client_as_a_reset(
    make_gateway: Callable[..., Gateway], family: int
) -> None:
    gateway = make_gateway()
    lab = gateway.lab
    start_peer(lab.server, "reset", RESETTING)
    host = lab.server.ip4 if family == 4 else lab.server.ip6
    proc = watch(gateway, host, 2, timeout=10, port=RESETTING, upload=False)
    ends = json.loads(proc.communicate(timeout=30)[0].strip().splitlines()[-1])["ends"]
    assert [read for read, *_ in ends] == ["reset", "reset"], ends
    log = gateway.proxy.wait_for("trio_tproxy.access", count=2)
    lines = [line for line in log.splitlines() if f":{RESETTING} " in line and "access" in line]
    assert len(lines) == 2 and all("reset" in line for line in lines), lines
