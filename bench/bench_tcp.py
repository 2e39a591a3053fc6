"""TCP through the gateway: trio-tproxy against plain kernel forwarding and v2ray.

In one lab (client -- gateway -- server namespaces), the same iperf3 workloads run
three ways: forwarded by the kernel (no diversion), diverted by TPROXY to trio-tproxy,
and diverted to v2ray (Debian's ``v2ray``: dokodemo-door + sockopt.tproxy, freedom
outbound with the same mark). Reported: medians of several runs and the ratios.

    python bench/bench_tcp.py [--runs 5] [--seconds 5] [--streams 1,8]

Needs root; touches only the namespaces it creates. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

from common import IPERF_PORT, MARK, PORT, iperf_tcp, start_v2ray, trio_tproxy_config, v2ray_direct
from netlab import Lab, requirements_met
from netlab.proxy import ProxyProcess
from netlab.servers import start_iperf3_server
from trio_tproxy.firewall.plan import DiversionPlan

TRIO_TPROXY = trio_tproxy_config('"tcp"')
V2RAY = v2ray_direct("tcp")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--streams", default="1,8")
    args = parser.parse_args()
    reason = requirements_met()
    if reason:
        print(f"cannot run: {reason}")
        return 1
    have_v2ray = shutil.which("v2ray") is not None
    with Lab.create(prefix="bench") as lab:
        start_iperf3_server(lab.server, IPERF_PORT)
        plan = DiversionPlan(tproxy_port=PORT, tproxy_udp=False, bypass_v4=(), bypass_v6=(),
                             proxy_marks=MARK, lan_interfaces=(lab.gateway.lan_if,))  # fmt: skip
        results: dict[tuple[str, int, bool], list[float]] = {}
        for streams in [int(s) for s in args.streams.split(",")]:
            for reverse in (False, True):
                for run in range(args.runs):
                    # interleave the contenders in every run: machine noise hits all alike
                    lab.gateway.remove_tproxy(plan)
                    results.setdefault(("kernel", streams, reverse), []).append(
                        iperf_tcp(lab, args.seconds, streams, reverse))
                    lab.gateway.install_tproxy(plan)
                    proxy = ProxyProcess(lab.gateway, TRIO_TPROXY, name=f"bench{run}")
                    proxy.wait_ready()
                    results.setdefault(("trio-tproxy", streams, reverse), []).append(
                        iperf_tcp(lab, args.seconds, streams, reverse))
                    proxy.stop()
                    if have_v2ray:
                        v2 = start_v2ray(lab, V2RAY)
                        results.setdefault(("v2ray", streams, reverse), []).append(
                            iperf_tcp(lab, args.seconds, streams, reverse))
                        v2.terminate()
                        v2.wait(5)
                    time.sleep(0.2)
        print(f"TCP throughput, Gbit/s, median of {args.runs} runs of {args.seconds}s "
              "(client -> gateway -> server; 'down' = server to client)")
        print(f"{'streams':>8} {'dir':>5} {'kernel':>8} {'trio-tproxy':>12} {'v2ray':>8} "
              f"{'trio/kernel':>12} {'trio/v2ray':>11}")
        for streams in [int(s) for s in args.streams.split(",")]:
            for reverse in (False, True):
                k = statistics.median(results[("kernel", streams, reverse)])
                t = statistics.median(results[("trio-tproxy", streams, reverse)])
                v = statistics.median(results.get(("v2ray", streams, reverse), [float("nan")]))
                print(f"{streams:>8} {'down' if reverse else 'up':>5} {k:8.2f} {t:12.2f} "
                      f"{v:8.2f} {t / k:12.2f} {t / v:11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
