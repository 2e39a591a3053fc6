"""``[process] workers = 2`` in the namespace lab: one supervisor, a hub and two workers.

Flows are spread over both workers; a worker killed with SIGKILL is started again
within 2 s and takes flows again, while the other worker's flows go on untouched; a bad
config at SIGHUP is rejected once, by the supervisor; SIGTERM drains every worker.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable

from netlab.proxy import ProxyProcess

from .conftest import ECHO, PEERS, SOURCE, Gateway, proxy_config

WORKERS = "[process]\nworkers = 2\n"


def worker_pids(proxy: ProxyProcess) -> dict[str, int]:
    """The children by name (their /proc comm is trio-tproxy-NAME)."""
    found = {}
    for pid in proxy.pids():
        try:
            with open(f"/proc/{pid}/comm") as comm:
                name = comm.read().strip()
        except OSError:
            continue
        if name.startswith("trio-tproxy-"):
            found[name.removeprefix("trio-tproxy-")] = pid
    return found


def owner_of(gateway: Gateway, port: int, pids: dict[str, int]) -> str:
    """Which worker holds the upstream connection to the server's ``port``."""
    out = gateway.lab.gateway.run(["ss", "-Htnp", "state", "established"]).stdout
    for line in out.splitlines():
        if f":{port} " in line + " " and "pid=" in line:
            for name, pid in pids.items():
                if f"pid={pid}," in line:
                    return name
    raise AssertionError(f"no worker holds a connection to port {port}:\n{out}")


def test_flows_spread_over_workers_and_a_dead_one_comes_back(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = make_gateway(proxy_config(extra=WORKERS))
    lab, proxy = gateway.lab, gateway.proxy
    assert "ready: 2 worker processes" in proxy.log()
    pids = worker_pids(proxy)
    assert sorted(pids) == ["hub", "w1", "w2"], pids
    for _ in range(30):  # a new source port each: the kernel's hash spreads them
        result = gateway.client("bulk", lab.server.ip4, ECHO, size=1000, timeout=10)
        assert result["intact"], result
    log = proxy.wait_for("trio_tproxy.access", count=30)
    served = {m.group(1) for m in re.finditer(r"\[(w\d)\] trio_tproxy\.access", log)}
    assert served == {"w1", "w2"}, served

    # A long flow on one worker; the other worker is killed and comes back.
    holder = lab.client.popen([sys.executable, str(PEERS), "hold", "--host", lab.server.ip4,
                               "--port", str(SOURCE), "--count", "1", "--timeout", "20"])  # fmt: skip
    assert holder.stdout is not None
    assert json.loads(holder.stdout.readline()) == {"holding": 1}
    keeper = owner_of(gateway, SOURCE, pids)
    victim = "w2" if keeper == "w1" else "w1"
    killed_at = time.monotonic()
    os.kill(pids[victim], signal.SIGKILL)
    proxy.wait_for(f"{victim} (pid {pids[victim]}) was killed by SIGKILL", timeout=5)
    deadline = killed_at + 2.0
    while time.monotonic() < deadline:
        again = worker_pids(proxy)
        if again.get(victim) not in (None, pids[victim]):
            break
        time.sleep(0.02)
    else:
        raise AssertionError(f"{victim} not started again within 2 s: {worker_pids(proxy)}")
    proxy.wait_for("trio_tproxy.app: serving:", count=4, timeout=5)  # hub, w1, w2, again
    assert holder.poll() is None, "the other worker's flow was lost"
    assert owner_of(gateway, SOURCE, worker_pids(proxy)) == keeper
    holder.kill()
    holder.wait(5)
    for _ in range(10):  # both workers serve again
        result = gateway.client("bulk", lab.server.ip4, ECHO, size=1000, timeout=10)
        assert result["intact"], result
    assert proxy.process.poll() is None


def test_a_bad_reload_is_rejected_once_and_sigterm_drains_all(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = make_gateway(proxy_config(extra=WORKERS))
    proxy = gateway.proxy
    good = proxy.config_path.read_text()
    proxy.config_path.write_text(good + '\n[dns]\ncache = "yes"\n')
    proxy.signal(signal.SIGHUP)
    proxy.wait_for("reload rejected, keeping the running configuration")
    time.sleep(0.5)
    log = proxy.log()
    assert log.count("reload rejected") == 1, log  # the supervisor's word, once
    assert "took the new configuration" not in log
    result = gateway.client("bulk", gateway.lab.server.ip4, ECHO, size=1000, timeout=10)
    assert result["intact"], result

    proxy.config_path.write_text(good)
    proxy.signal(signal.SIGHUP)
    log = proxy.wait_for("configuration reloaded from", timeout=30)
    assert log.count("took the new configuration") == 3  # the hub and both workers

    children = worker_pids(proxy)
    assert proxy.stop() == 0
    log = proxy.log()
    assert log.count("] trio_tproxy.app: stopped") == 3, log  # every child drained
    assert log.rstrip().endswith("trio_tproxy.workers: stopped"), log[-500:]
    for pid in children.values():
        assert not os.path.exists(f"/proc/{pid}/comm") or _zombie_or_gone(pid)


def _zombie_or_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_children_stop_when_the_supervisor_is_killed(
    make_gateway: Callable[..., Gateway],
) -> None:
    gateway = make_gateway(proxy_config(extra=WORKERS))
    proxy = gateway.proxy
    children = worker_pids(proxy)
    assert len(children) == 3
    proxy.process.kill()  # SIGKILL: no chance to stop them itself
    proxy.process.wait(5)
    deadline = time.monotonic() + 4 + 5  # policy.grace = 4s, and a margin
    while time.monotonic() < deadline:
        if all(_zombie_or_gone(pid) for pid in children.values()):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"children still serve without their supervisor: {children}")
    assert proxy.log().count("] trio_tproxy.app: stopped") == 3


def test_a_restarted_hub_serves_the_api_for_every_worker_again(
    make_gateway: Callable[..., Gateway],
) -> None:
    from .test_api_gateway import api_config, get_json, start_download

    gateway = make_gateway(api_config() + WORKERS)
    lab, proxy = gateway.lab, gateway.proxy
    holder = start_download(lab)
    try:
        def flows() -> list[dict[str, object]]:
            return [c for c in get_json(lab.gateway, "/connections")["connections"]
                    if c["metadata"]["destinationPort"] == str(SOURCE)]  # fmt: skip

        assert len(flows()) == 1  # the hub asks both workers; one carries it
        pids = worker_pids(proxy)
        os.kill(pids["hub"], signal.SIGKILL)
        proxy.wait_for(f"hub (pid {pids['hub']}) was killed by SIGKILL", timeout=5)
        deadline = time.monotonic() + 5
        while True:  # the new hub serves the API; the workers link to it again
            try:
                if len(flows()) == 1:
                    break
            except Exception:  # not up yet: refused, or no answer
                pass
            assert time.monotonic() < deadline, proxy.log()[-3000:]
            time.sleep(0.2)
        assert holder.poll() is None  # the flow itself never noticed
        assert get_json(lab.gateway, "/proxies/pick")["now"] == "direct"
    finally:
        holder.kill()
        holder.wait(5)
