"""TCP through the gateway: trio-tproxy against plain kernel forwarding and v2ray.

In one lab (client -- gateway -- server namespaces), the same iperf3 workloads run
three ways: forwarded by the kernel (no diversion), diverted by TPROXY to trio-tproxy,
and diverted to v2ray (Debian's ``v2ray``: dokodemo-door + sockopt.tproxy, freedom
outbound with the same mark). Reported: medians of several runs and the ratios.

    python bench/bench_tcp.py [--runs 5] [--seconds 5] [--streams 1,8] [--api]

``--api`` adds a contender: trio-tproxy with the controller API on and a dashboard
attached (a /connections WebSocket every second and /traffic), to show what the API
costs flows.

Needs root; touches only the namespaces it creates. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import IPERF_PORT, MARK, PORT, iperf_tcp, start_v2ray, trio_tproxy_config, v2ray_direct
from netlab import Lab, requirements_met
from netlab.proxy import ProxyProcess
from netlab.servers import start_iperf3_server
from trio_tproxy.firewall.plan import DiversionPlan

TRIO_TPROXY = trio_tproxy_config('"tcp"')
TRIO_TPROXY_API = trio_tproxy_config('"tcp"', extra='[api]\nlisten = "127.0.0.1:9090"\n')
APICLIENT = Path(__file__).resolve().parents[1] / "tests" / "api" / "apiclient.py"


def attach_dashboard(lab: Lab, seconds: int) -> list[subprocess.Popen[str]]:
    """What an open dashboard asks for, from inside the gateway's namespace."""
    specs = [{"op": "websocket", "url": f"http://127.0.0.1:9090{path}", "count": 10_000,
              "timeout": seconds + 5} for path in ("/connections?interval=1000", "/traffic")]
    return [lab.gateway.popen([sys.executable, str(APICLIENT), json.dumps(spec)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for spec in specs]  # fmt: skip
V2RAY = v2ray_direct("tcp")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--streams", default="1,8")
    parser.add_argument("--api", action="store_true", help="also with the API and a dashboard")
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
                    if args.api:
                        proxy = ProxyProcess(lab.gateway, TRIO_TPROXY_API, name=f"bench-api{run}")
                        proxy.wait_ready()
                        dashboard = attach_dashboard(lab, args.seconds)
                        results.setdefault(("trio+api", streams, reverse), []).append(
                            iperf_tcp(lab, args.seconds, streams, reverse))
                        for client in dashboard:
                            client.kill()
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
        if args.api:
            print("with the API on and a dashboard attached:")
            print(f"{'streams':>8} {'dir':>5} {'api off':>8} {'api on':>8} {'on/off':>7}")
            for streams in [int(s) for s in args.streams.split(",")]:
                for reverse in (False, True):
                    t = statistics.median(results[("trio-tproxy", streams, reverse)])
                    a = statistics.median(results[("trio+api", streams, reverse)])
                    print(f"{streams:>8} {'down' if reverse else 'up':>5} {t:8.2f} {a:8.2f} "
                          f"{a / t:7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
