"""The kernel path, without the proxy: TPROXY and REDIRECT deliver LAN flows to a
transparent listener on the gateway with their original destination intact."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netlab import Lab
from netlab.servers import start_http_server, wait_listening
from trio_tproxy.firewall import DiversionPlan

pytestmark = pytest.mark.netns

HERE = Path(__file__).parent
LISTENER = HERE / "transparent_listener.py"
UDP_CLIENT = HERE / "udp_client.py"
TPROXY_PORT = 12345
REDIRECT_PORT = 12346


def _plan(lab: Lab, **overrides: Any) -> DiversionPlan:
    # The lab lives in 10/8 and fc00::/7, so the usual reserved bypass would skip it.
    fields: dict[str, Any] = {
        "tproxy_port": TPROXY_PORT,
        "bypass_v4": (),
        "bypass_v6": (),
        "lan_interfaces": (lab.gateway.lan_if,),
    }
    fields.update(overrides)
    return DiversionPlan(**fields)


def _url(host: str, port: int = 80, path: str = "/") -> str:
    return f"http://[{host}]:{port}{path}" if ":" in host else f"http://{host}:{port}{path}"


def _curl(lab: Lab, host: str, path: str = "/") -> str:
    return lab.client.run(["curl", "-sS", "--max-time", "5", _url(host, path=path)]).stdout


def _mapped(lab_ip: str) -> str:
    """How an IPv4 address appears on a dual-stack [::] socket."""
    return lab_ip if ":" in lab_ip else f"::ffff:{lab_ip}"


@pytest.fixture
def listener(lab: Lab) -> Iterator[Any]:
    """Start the transparent listener in the gateway; yields a starter function."""
    started: list[subprocess.Popen[str]] = []

    def start(mode: str, port: int, count: int) -> subprocess.Popen[str]:
        process = lab.gateway.popen([sys.executable, str(LISTENER), mode, str(port), str(count)])
        started.append(process)
        wait_listening(lab.gateway, port, udp=mode.startswith("udp"), process=process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=5)


def _finish(process: subprocess.Popen[str]) -> list[dict[str, Any]]:
    stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    return [json.loads(line) for line in stdout.splitlines()]


def test_tproxy_tcp_keeps_original_destination(lab: Lab, listener: Any) -> None:
    lab.gateway.install_tproxy(_plan(lab))
    process = listener("tcp-tproxy", TPROXY_PORT, 2)
    answers = [json.loads(_curl(lab, host)) for host in (lab.server.ip4, lab.server.ip6)]
    assert answers == [
        {
            "local": [_mapped(lab.server.ip4), 80],
            "peer": [_mapped(lab.client.ip4), answers[0]["peer"][1]],
        },
        {"local": [lab.server.ip6, 80], "peer": [lab.client.ip6, answers[1]["peer"][1]]},
    ]
    assert _finish(process) == answers


def test_tproxy_bypass_sets_reach_the_server_directly(lab: Lab, listener: Any, www: Path) -> None:
    server = start_http_server(lab.server, www, port=80)
    plan = _plan(lab, bypass_v4=(lab.server.extra_net4,), bypass_v6=(lab.server.extra_net6,))
    lab.gateway.install_tproxy(plan)
    process = listener("tcp-tproxy", TPROXY_PORT, 2)
    for bypassed in (lab.server.extra_ip4[0], lab.server.extra_ip6[0]):
        assert _curl(lab, bypassed, "/hello.txt") == "hello from the server\n"
    diverted = [json.loads(_curl(lab, host)) for host in (lab.server.ip4, lab.server.ip6)]
    assert [answer["local"][0] for answer in diverted] == [
        _mapped(lab.server.ip4),
        lab.server.ip6,
    ]
    assert [entry.server_addr for entry in server.requests()] == [
        lab.server.extra_ip4[0],
        lab.server.extra_ip6[0],
    ]
    _finish(process)


def test_tproxy_udp_original_destination_and_spoofed_reply(lab: Lab, listener: Any) -> None:
    lab.gateway.install_tproxy(_plan(lab))
    process = listener("udp-tproxy", TPROXY_PORT, 2)
    replies = []
    for host in (lab.server.ip4, lab.server.ip6):
        # udp_client uses a connected socket: it only sees a reply sent from host:53.
        result = lab.client.run([sys.executable, str(UDP_CLIENT), host, "53"], timeout=10)
        replies.append(json.loads(result.stdout))
    assert [reply["original_dst"] for reply in replies] == [
        [lab.server.ip4, 53],
        [lab.server.ip6, 53],
    ]
    assert [reply["peer"][0] for reply in replies] == [
        _mapped(lab.client.ip4),
        lab.client.ip6,
    ]
    assert _finish(process) == replies


def test_redirect_tcp_reports_original_dst(lab: Lab, listener: Any) -> None:
    lab.gateway.install_tproxy(_plan(lab, tproxy_port=None, redirect_port=REDIRECT_PORT))
    process = listener("tcp-redirect", REDIRECT_PORT, 2)
    answers = [json.loads(_curl(lab, host)) for host in (lab.server.ip4, lab.server.ip6)]
    assert [answer["original_dst"] for answer in answers] == [
        [lab.server.ip4, 80],
        [lab.server.ip6, 80],
    ]
    # REDIRECT rewrote the destination to the gateway's own address on the LAN side.
    assert [answer["local"][0] for answer in answers] == [
        _mapped(lab.gateway.lan_ip4),
        lab.gateway.lan_ip6,
    ]
    _finish(process)


def test_gateway_itself_is_never_diverted(lab: Lab, listener: Any, www: Path) -> None:
    # `fib daddr type local`: a service on the gateway stays reachable with TPROXY on.
    start_http_server(lab.gateway, www, port=8080)
    lab.gateway.install_tproxy(_plan(lab))
    for host in (lab.gateway.lan_ip4, lab.gateway.lan_ip6):
        url = _url(host, port=8080, path="/hello.txt")
        out = lab.client.run(["curl", "-sS", "--max-time", "5", url]).stdout
        assert out == "hello from the server\n"


def test_install_is_idempotent_and_removal_complete(lab: Lab) -> None:
    plan = _plan(lab)
    before = _policy_state(lab)
    lab.gateway.install_tproxy(plan)
    once = (lab.gateway.nft_list(), _policy_state(lab))
    lab.gateway.install_tproxy(plan)
    assert (lab.gateway.nft_list(), _policy_state(lab)) == once
    assert f"table inet {plan.table}" in once[0]
    lab.gateway.remove_tproxy(plan)
    assert lab.gateway.nft_list().strip() == ""
    assert _policy_state(lab) == before


def _policy_state(lab: Lab) -> str:
    script = "ip -4 rule; ip -6 rule; ip -4 route show table all; ip -6 route show table all"
    return lab.gateway.run(["sh", "-c", script]).stdout
