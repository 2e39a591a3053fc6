"""UDP through the gateway: trio-tproxy against plain kernel forwarding and v2ray.

In one lab (client -- gateway -- server namespaces), the same ``iperf3 -u`` workloads
run three ways: forwarded by the kernel (no diversion), diverted by TPROXY to
trio-tproxy, and diverted to v2ray (Debian's ``v2ray``: dokodemo-door, network udp,
followRedirect + sockopt.tproxy, freedom outbound with the same mark). Runs are
interleaved so machine noise hits all three alike; medians of several runs.

Workloads, client -> server ("up") and server -> client ("down", iperf3 -R):

* ``pps``: 64-byte datagrams sent as fast as iperf3 can (-b 0): datagrams/s *received*;
* ``Mbit/s``: 1400-byte datagrams, as fast as possible: received Mbit/s and loss;
* ``200M``: 1400-byte datagrams paced at 200 Mbit/s: loss % (the test suite's target).

    python bench/bench_udp.py [--runs 3] [--seconds 4]

Needs root; touches only the namespaces it creates. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time
from collections.abc import Callable

from common import IPERF_PORT, MARK, PORT, iperf_udp, start_v2ray, trio_tproxy_config, v2ray_direct
from netlab import Lab, requirements_met
from netlab.proxy import ProxyProcess
from netlab.servers import start_iperf3_server
from trio_tproxy.firewall.plan import DiversionPlan

TRIO_TPROXY = trio_tproxy_config('["tcp", "udp"]')
V2RAY = v2ray_direct("tcp,udp")
DRAIN = 1.5  # seconds between measurements

# name -> (datagram length, iperf3 -b)
WORKLOADS = {"pps": (64, "0"), "Mbit/s": (1400, "0"), "200M": (1400, "200M")}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=4)
    args = parser.parse_args()
    reason = requirements_met()
    if reason:
        print(f"cannot run: {reason}")
        return 1
    have_v2ray = shutil.which("v2ray") is not None
    results: dict[tuple[str, str, bool], list[dict[str, float]]] = {}
    with Lab.create(prefix="bench") as lab:
        start_iperf3_server(lab.server, IPERF_PORT)
        plan = DiversionPlan(tproxy_port=PORT, bypass_v4=(), bypass_v6=(), proxy_marks=MARK,
                             lan_interfaces=(lab.gateway.lan_if,))  # fmt: skip

        def measure(who: str, run: int) -> None:
            for name, (length, rate) in WORKLOADS.items():
                for reverse in (False, True):
                    sample = iperf_udp(lab, args.seconds, length, rate, reverse)
                    results.setdefault((who, name, reverse), []).append(sample)
                    # A proxy slower than a -b 0 sender still relays its backlog after
                    # iperf3 returns; those late datagrams must not reach the next test's
                    # server socket (iperf3 would take their source for its client).
                    time.sleep(DRAIN)
            del run

        contenders: list[tuple[str, Callable[[int], Callable[[], object]]]] = []

        def kernel(run: int) -> Callable[[], object]:
            lab.gateway.remove_tproxy(plan)
            return lambda: lab.gateway.install_tproxy(plan)

        def trio_tproxy(run: int) -> Callable[[], object]:
            proxy = ProxyProcess(lab.gateway, TRIO_TPROXY, name=f"bench{run}")
            proxy.wait_ready()
            return proxy.stop

        def v2ray(run: int) -> Callable[[], object]:
            proc = start_v2ray(lab, V2RAY, udp=True)
            return lambda: (proc.terminate(), proc.wait(5))

        contenders = [("kernel", kernel), ("trio-tproxy", trio_tproxy)]
        if have_v2ray:
            contenders.append(("v2ray", v2ray))
        lab.gateway.install_tproxy(plan)
        for run in range(args.runs):
            for who, start in contenders:  # interleaved: noise hits every contender alike
                stop = start(run)
                measure(who, run)
                stop()
                time.sleep(0.2)
    report(results, args.runs, args.seconds, [who for who, _ in contenders])
    return 0


def report(results: dict[tuple[str, str, bool], list[dict[str, float]]], runs: int,
           seconds: int, who: list[str]) -> None:  # fmt: skip
    def med(key: tuple[str, str, bool], field: str) -> float:
        samples = results.get(key)
        return statistics.median(s[field] for s in samples) if samples else float("nan")

    print(f"UDP through the gateway, median of {runs} runs of {seconds}s (iperf3 -u -w 4M; "
          "shared 2-core machine: figures are noisy)")  # fmt: skip
    head = "".join(f"{w:>13}" for w in who)
    ratios = "".join(f"{'trio/' + w:>13}" for w in who if w != "trio-tproxy")
    print(f"{'workload':<16}{'dir':>5}{head}{ratios}")
    rows = [("pps", "pps", "datagrams/s"), ("Mbit/s", "mbps", "Mbit/s"), ("200M", "loss", "loss %")]
    for name, field, unit in rows:
        for reverse in (False, True):
            values = {w: med((w, name, reverse), field) for w in who}
            cells = "".join(f"{values[w]:13.1f}" for w in who)
            rel = "".join(
                f"{values['trio-tproxy'] / values[w]:13.2f}" if values[w] else f"{'-':>13}"
                for w in who if w != "trio-tproxy"
            ) if field != "loss" else ""  # fmt: skip
            print(f"{name + ' (' + unit + ')':<16}{'down' if reverse else 'up':>5}{cells}{rel}")


if __name__ == "__main__":
    raise SystemExit(main())
