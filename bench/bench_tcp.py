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
import json
import shutil
import statistics
import subprocess
import time

from trio_tproxy.firewall.plan import DiversionPlan
from trio_tproxy.netlab import Lab, requirements_met
from trio_tproxy.netlab.proxy import ProxyProcess
from trio_tproxy.netlab.servers import start_iperf3_server, wait_listening

PORT = 12345
MARK = 255
IPERF_PORT = 5201

TRIO_TPROXY = f"""
[log]
level = "info"
access = false
[[inbounds]]
tag = "lan"
type = "tproxy"
port = {PORT}
network = "tcp"
[[outbounds]]
tag = "direct"
type = "direct"
mark = {MARK}
"""

V2RAY = {
    "log": {"loglevel": "warning"},
    "inbounds": [{
        "port": PORT, "protocol": "dokodemo-door",
        "settings": {"network": "tcp", "followRedirect": True},
        "streamSettings": {"sockopt": {"tproxy": "tproxy"}},
    }],
    "outbounds": [{"protocol": "freedom", "streamSettings": {"sockopt": {"mark": MARK}}}],
}  # fmt: skip


def iperf(lab: Lab, seconds: int, streams: int, reverse: bool) -> float:
    argv = ["iperf3", "-c", lab.server.ip4, "-p", str(IPERF_PORT), "-t", str(seconds),
            "-P", str(streams), "-J", "--connect-timeout", "3000"]  # fmt: skip
    if reverse:
        argv.append("-R")
    out = lab.client.run(argv, timeout=seconds + 30)
    result = json.loads(out.stdout)
    return float(result["end"]["sum_received"]["bits_per_second"]) / 1e9


def start_v2ray(lab: Lab) -> subprocess.Popen[str]:
    conf = lab.gateway.workdir / "v2ray.json"
    conf.write_text(json.dumps(V2RAY))
    proc = lab.gateway.popen(["v2ray", "-config", str(conf)], stdout=subprocess.DEVNULL)
    wait_listening(lab.gateway, PORT, process=proc)
    return proc


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
                        iperf(lab, args.seconds, streams, reverse))
                    lab.gateway.install_tproxy(plan)
                    proxy = ProxyProcess(lab.gateway, TRIO_TPROXY, name=f"bench{run}")
                    proxy.wait_ready()
                    results.setdefault(("trio-tproxy", streams, reverse), []).append(
                        iperf(lab, args.seconds, streams, reverse))
                    proxy.stop()
                    if have_v2ray:
                        v2 = start_v2ray(lab)
                        results.setdefault(("v2ray", streams, reverse), []).append(
                            iperf(lab, args.seconds, streams, reverse))
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
