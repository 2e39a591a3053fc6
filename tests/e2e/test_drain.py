"""SIGTERM with policy.grace = "1s" (issue 13, defect 3): what ends within the grace ends
intact; what is still open at the deadline is cut visibly (a TCP reset, outcome
`cancelled` in the access log, UDP included), and the process exits 0 soon after."""

from __future__ import annotations

import hashlib
import random
import signal
import sys
import time
from collections.abc import Callable

import pytest

from .conftest import Gateway, proxy_config, start_peer
from .test_udp_gateway import BOTH, UDP_PEERS, start_udp_server

pytestmark = pytest.mark.netns

ENDLESS, FINISHING, UDP_STREAM = 9010, 9011, 9012
GRACE = 1.0


def finishing_body() -> bytes:  # what handle_finishing in peers.py sends
    return b"".join(random.Random(i).randbytes(1000) for i in range(10))


def test_drain_resets_what_outlives_the_grace_and_exits_zero(
    make_gateway: Callable[..., Gateway],
) -> None:
    config = proxy_config(network=BOTH).replace('grace = "4s"', f'grace = "{GRACE:g}s"')
    gateway = make_gateway(config)
    lab, proxy = gateway.lab, gateway.proxy
    server = lab.server.ip4
    start_peer(lab.server, "endless", ENDLESS)
    start_peer(lab.server, "finishing", FINISHING)
    start_udp_server(lab.server, UDP_STREAM, [server])
    endless = lab.client.popen(["curl", "-sS", "-o", "/dev/null", f"http://{server}:{ENDLESS}/"])
    # a UDP session kept busy past the deadline: 100 datagrams, one every 50 ms
    streaming = lab.client.popen([sys.executable, str(UDP_PEERS), "stream", "--host", server,
                                  "--port", str(UDP_STREAM), "--count", "100", "--interval", "50",
                                  "--timeout", "10"])  # fmt: skip
    body = lab.client.workdir / "finishing.bin"
    time.sleep(0.5)  # both are flowing
    finishing = lab.client.popen(["curl", "-sS", "-o", str(body), f"http://{server}:{FINISHING}/"])
    time.sleep(0.1)  # its request is through; its body takes ~0.5 s
    start = time.monotonic()
    proxy.signal(signal.SIGTERM)
    assert proxy.process.wait(GRACE + 5) == 0
    elapsed = time.monotonic() - start
    print(f"exited 0 after {elapsed:.2f}s (grace {GRACE:g}s)")
    assert elapsed < GRACE + 2
    assert endless.wait(10) == 56, endless.communicate()  # curl: "Recv failure: Connection reset"
    assert finishing.wait(10) == 0, finishing.communicate()
    assert hashlib.sha256(body.read_bytes()).digest() == hashlib.sha256(finishing_body()).digest()
    streaming.kill()
    streaming.wait(5)
    lines = proxy.access_lines()
    (cut,) = [line for line in lines if f":{ENDLESS} " in line]
    assert "cancelled" in cut, cut
    (done,) = [line for line in lines if f":{FINISHING} " in line]
    assert "done" in done and "cancelled" not in done, done
    (udp,) = [line for line in lines if f":{UDP_STREAM} " in line]
    assert " udp " in udp and "cancelled" in udp, udp
