"""The real kernel path: a LAN in namespaces, TPROXY on the gateway, trio-tproxy there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

from netlab import Lab, Netns, requirements_met
from netlab.proxy import WORKERS_ENV, ProxyProcess
from trio_tproxy.firewall.plan import DiversionPlan

PEERS = Path(__file__).with_name("peers.py")
TPROXY_PORT = 12345
REDIRECT_PORT = 12346
PROXY_MARK = 255
# A test of what one process does (its own limits, its own log counts) that the run of
# the gateway tests with worker processes (TRIO_TPROXY_TEST_WORKERS) leaves out.
SINGLE_PROCESS = pytest.mark.skipif(
    bool(os.environ.get(WORKERS_ENV)), reason="one process's own semantics"
)

# Peer servers in the server namespace, by port.
ECHO, HALFCLOSE, SOURCE, SLOW, BANNER = 9000, 9001, 9002, 9003, 2525

pytestmark = pytest.mark.netns


def proxy_config(*, inbound: str = "tproxy", extra: str = "", policy: str = "",
                 network: tuple[str, ...] = ("tcp",)) -> str:  # fmt: skip
    port = TPROXY_PORT if inbound == "tproxy" else REDIRECT_PORT
    return f"""
[log]
level = "debug"
[[inbounds]]
tag = "{inbound}-in"
type = "{inbound}"
port = {port}
network = {json.dumps(list(network))}
[[outbounds]]
tag = "direct"
type = "direct"
mark = {PROXY_MARK}
[[outbounds]]
tag = "block"
type = "block"
[policy]
grace = "4s"
{policy}
{extra}
"""


def lab_plan(lab: Lab, *, redirect: bool = False) -> DiversionPlan:
    # The lab's addresses are private ranges: no bypass sets here, the LAN interface
    # match is what keeps the gateway's own and the WAN's traffic undiverted.
    return DiversionPlan(
        tproxy_port=None if redirect else TPROXY_PORT,
        tproxy_udp=not redirect,
        redirect_port=REDIRECT_PORT if redirect else None,
        bypass_v4=(), bypass_v6=(),
        proxy_marks=PROXY_MARK,
        lan_interfaces=(lab.gateway.lan_if,),
    )  # fmt: skip


def start_peer(ns: Netns, mode: str, port: int) -> subprocess.Popen[str]:
    proc = ns.popen([sys.executable, str(PEERS), f"serve-{mode}", "--port", str(port)])
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening"
    return proc


def run_client(ns: Netns, mode: str, host: str, port: int, timeout: float = 60,
               **args: object) -> dict[str, object]:  # fmt: skip
    argv = [sys.executable, str(PEERS), mode, "--host", host, "--port", str(port),
            "--timeout", str(timeout)]  # fmt: skip
    for key, value in args.items():
        argv += [f"--{key}", str(value)]
    result = ns.run(argv, timeout=timeout + 30)
    parsed: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


@attrs.define
class Gateway:
    lab: Lab
    proxy: ProxyProcess

    def client(self, mode: str, host: str, port: int, **kw: object) -> dict[str, object]:
        return run_client(self.lab.client, mode, host, port, **kw)


@pytest.fixture
def lab() -> Iterator[Lab]:
    reason = requirements_met()
    if reason:
        pytest.skip(reason)
    with Lab.create() as lab:
        for mode, port in (("echo", ECHO), ("halfclose", HALFCLOSE), ("source", SOURCE),
                           ("slow", SLOW), ("banner", BANNER)):  # fmt: skip
            start_peer(lab.server, mode, port)
        yield lab


@pytest.fixture
def make_gateway(lab: Lab) -> Iterator[Callable[..., Gateway]]:
    started: list[ProxyProcess] = []

    def make(config: str | None = None, *, redirect: bool = False) -> Gateway:
        lab.gateway.install_tproxy(lab_plan(lab, redirect=redirect))
        inbound = "redirect" if redirect else "tproxy"
        proxy = ProxyProcess(lab.gateway, config or proxy_config(inbound=inbound))
        started.append(proxy)
        proxy.wait_ready()
        return Gateway(lab, proxy)

    yield make
    for proxy in started:
        proxy.stop()


@pytest.fixture
def gateway(make_gateway: Callable[..., Gateway]) -> Gateway:
    return make_gateway()
