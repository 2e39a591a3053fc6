"""The lab itself: topology, forwarding, process tracking and cleanup."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from netlab import Lab, Netns, cleanup_stale, list_namespaces, requirements_met
from netlab.servers import start_http_server

pytestmark = pytest.mark.netns


def _skip_without_netns() -> None:
    reason = requirements_met()
    if reason is not None:
        pytest.skip(reason)


def _url(host: str, path: str = "/hello.txt") -> str:
    return f"http://[{host}]{path}" if ":" in host else f"http://{host}{path}"


def _curl(lab: Lab, host: str) -> str:
    return lab.client.run(["curl", "-sS", "--max-time", "5", _url(host)]).stdout


def test_client_reaches_server_through_plain_forwarding(lab: Lab, www: Path) -> None:
    server = start_http_server(lab.server, www, port=80)
    targets = [lab.server.ip4, lab.server.ip6, *lab.server.extra_ip4, *lab.server.extra_ip6]
    for host in targets:
        assert _curl(lab, host) == "hello from the server\n"
    seen = [(entry.remote_addr, entry.server_addr, entry.status) for entry in server.requests()]
    assert seen == [
        (lab.client.ip6 if ":" in host else lab.client.ip4, host, 200) for host in targets
    ]


def test_names_are_unique_and_fit_ifnamsiz(lab: Lab) -> None:
    names = [node.name for node in lab.nodes]
    assert names == [f"{lab.tag}-c", f"{lab.tag}-g", f"{lab.tag}-s"]
    ifaces = [lab.client.iface, lab.gateway.lan_if, lab.gateway.wan_if, lab.server.iface]
    assert len(set(ifaces)) == 4
    assert all(len(name) <= 15 and name.startswith(lab.tag) for name in ifaces)
    assert not lab.gateway.run(["ip", "-6", "addr", "show", "tentative"]).stdout.strip()


def test_unreachable_range_fails_at_once_from_the_gateway(lab: Lab) -> None:
    # Where the proxy's outbound connects from: the route lookup fails synchronously.
    script = (
        "import socket, sys\n"
        "for host in sys.argv[1:]:\n"
        "    try:\n"
        "        socket.create_connection((host, 80), timeout=5)\n"
        "    except OSError as exc:\n"
        "        print(exc.errno)\n"
    )
    started = time.monotonic()
    result = lab.gateway.run(["python3", "-c", script, lab.unreachable_ip4, lab.unreachable_ip6])
    assert result.stdout.split() == ["113", "113"]  # EHOSTUNREACH, both families
    assert time.monotonic() - started < 1.0


def test_close_kills_processes_and_removes_namespaces() -> None:
    _skip_without_netns()
    with Lab.create(prefix="tpt") as lab:
        sleeper = lab.gateway.popen(["sleep", "60"])
        # A grandchild we never tracked: found through `ip netns pids`.
        lab.server.run(["sh", "-c", "sleep 60 >/dev/null 2>&1 &"])
        assert lab.server.pids()
        names = [node.name for node in lab.nodes]
    assert sleeper.poll() is not None
    assert not set(names) & set(list_namespaces())


def test_cleanup_runs_when_the_body_raises() -> None:
    _skip_without_netns()
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), Lab.create(prefix="tpt") as lab:
        names = [node.name for node in lab.nodes]
        lab.client.popen(["sleep", "60"])
        raise RuntimeError("boom")
    assert names
    assert not set(names) & set(list_namespaces())


def test_cleanup_stale_removes_orphans_but_spares_live_labs() -> None:
    _skip_without_netns()
    orphan = "tptst-0ddba1-c"  # what a crashed run leaves: a namespace, no owner lock
    subprocess.run(["ip", "netns", "add", orphan], check=True)
    try:
        with Lab.create(prefix="tptst") as live:
            removed = cleanup_stale("tptst")
            assert removed == [orphan]
            present = set(list_namespaces())
            assert orphan not in present
            assert {node.name for node in live.nodes} <= present
    finally:
        subprocess.run(["ip", "netns", "del", orphan], check=False, capture_output=True)


def test_setup_and_teardown_are_fast() -> None:
    _skip_without_netns()
    started = time.monotonic()
    with Lab.create(prefix="tpt"):
        built = time.monotonic()
    done = time.monotonic()
    assert built - started < 1.0
    assert done - built < 1.0


def test_a_failed_setup_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    _skip_without_netns()
    from netlab import lab as lab_module

    created: list[str] = []
    real_batch = lab_module._ip_batch

    def failing_batch(netns: Netns, lines: list[str]) -> None:
        created.append(netns.name)
        if netns.name.endswith("-s"):
            raise RuntimeError("setup broke half way")
        real_batch(netns, lines)

    monkeypatch.setattr(lab_module, "_ip_batch", failing_batch)
    with pytest.raises(RuntimeError, match="half way"):
        Lab.create(prefix="tpt")
    assert len(created) == 3
    assert not set(created) & set(list_namespaces())


_ABANDON = """
import os, signal, sys
from netlab import Lab
lab = Lab.create(prefix=sys.argv[1])
print(" ".join(node.name for node in lab.nodes), flush=True)
if sys.argv[2] == "crash":
    os.kill(os.getpid(), signal.SIGKILL)
"""


def _abandon_lab(prefix: str, how: str) -> list[str]:
    """Build a lab in a child process that exits without closing it."""
    argv = [sys.executable, "-c", _ABANDON, prefix, how]
    # The crash case dies of SIGKILL on purpose: no returncode check.
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    return result.stdout.split()


def test_atexit_cleans_up_an_unclosed_lab() -> None:
    _skip_without_netns()
    names = _abandon_lab("tptae", "exit")
    assert len(names) == 3
    assert not set(names) & set(list_namespaces())


def test_cleanup_stale_sweeps_a_crashed_run() -> None:
    _skip_without_netns()
    names = _abandon_lab("tptcr", "crash")  # SIGKILL: no atexit, the flock dies with it
    try:
        assert len(names) == 3
        assert set(names) <= set(list_namespaces())
        assert sorted(cleanup_stale("tptcr")) == sorted(names)
        assert not set(names) & set(list_namespaces())
    finally:
        cleanup_stale("tptcr")
