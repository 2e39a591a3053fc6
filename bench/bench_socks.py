"""The socks outbound: trio-tproxy against v2ray, both in front of the same microsocks.

One lab (client -- gateway -- server namespaces). microsocks, iperf3 and nginx run in
the server namespace. The gateway diverts LAN TCP with TPROXY either to trio-tproxy or
to v2ray (Debian's ``v2ray``: dokodemo-door + sockopt.tproxy, ``socks`` outbound with the
same mark); both send every flow to microsocks with SOCKS5 CONNECT, sniffing off.
Measured, interleaved run by run so machine noise hits both alike:

* throughput: iperf3, 1 and 8 streams, up and down (Gbit/s);
* connections per second: ``ab`` (a new TCP connection per request, so each one costs
  a TPROXY accept, a SOCKS5 handshake and microsocks' connect) fetching a 16-byte file.

    python bench/bench_socks.py [--runs 5] [--seconds 5] [--requests 3000] [--concurrency 16]

Needs root; touches only the namespaces it creates. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from common import (
    IPERF_PORT,
    MARK,
    PORT,
    connections_per_second,
    dokodemo_inbound,
    iperf_tcp,
    start_v2ray,
    trio_tproxy_config,
)
from netlab import Lab, requirements_met
from netlab.proxy import ProxyProcess
from netlab.servers import start_http_server, start_iperf3_server, wait_listening
from trio_tproxy.firewall.plan import DiversionPlan

SOCKS_PORT = 1080
WEB_PORT = 8080


def trio_config(socks: str) -> str:
    outbound = f'tag = "proxy"\ntype = "socks"\nserver = "{socks}:{SOCKS_PORT}"\nmark = {MARK}'
    return trio_tproxy_config('"tcp"', outbound, '[policy]\nhandshake = "10s"\n')


def v2ray_config(socks: str) -> dict[str, object]:
    return {
        "log": {"loglevel": "warning"},
        # v2ray does not pass a half-close on: once nginx has answered and closed, it
        # holds the client connection for uplinkOnly (1 s by default) before closing,
        # which would cap ab at concurrency/1 s. 0 closes at once, as a FIN passed on
        # does in trio-tproxy, so both are measured doing the same work.
        "policy": {"levels": {"0": {"uplinkOnly": 0, "downlinkOnly": 0}}},
        "inbounds": [dokodemo_inbound("tcp")],
        "outbounds": [{
            "protocol": "socks",
            "settings": {"servers": [{"address": socks, "port": SOCKS_PORT}]},
            "streamSettings": {"sockopt": {"mark": MARK}},
        }],
    }  # fmt: skip


class Contender:
    """Start one proxy on the gateway, measure, stop it."""

    def __init__(self, name: str, lab: Lab) -> None:
        self.name = name
        self.lab = lab

    def start(self) -> Callable[[], None]:
        socks = self.lab.server.ip4
        if self.name == "trio-tproxy":
            proxy = ProxyProcess(self.lab.gateway, trio_config(socks), name="bench-socks")
            proxy.wait_ready()

            def stop_trio() -> None:
                if proxy.stop() != 0:
                    raise RuntimeError(f"trio-tproxy did not exit cleanly:\n{proxy.log()}")

            return stop_trio
        process = start_v2ray(self.lab, v2ray_config(socks))

        def stop() -> None:
            process.terminate()
            process.wait(10)

        return stop


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--streams", default="1,8")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    reason = requirements_met()
    missing = [tool for tool in ("microsocks", "iperf3", "ab", "v2ray") if not shutil.which(tool)]
    if reason or missing:
        print(f"cannot run: {reason or 'missing ' + ', '.join(missing)}")
        return 1
    streams_list = [int(s) for s in args.streams.split(",")]
    names = ("trio-tproxy", "v2ray")
    with Lab.create(prefix="bench") as lab, tempfile.TemporaryDirectory() as root:
        (Path(root) / "small.txt").write_text("sixteen bytes!!\n")
        start_http_server(lab.server, Path(root), port=WEB_PORT)
        start_iperf3_server(lab.server, IPERF_PORT)
        socks = lab.server.popen(["microsocks", "-i", lab.server.ip4, "-p", str(SOCKS_PORT)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_listening(lab.server, SOCKS_PORT, process=socks)
        plan = DiversionPlan(tproxy_port=PORT, tproxy_udp=False, bypass_v4=(), bypass_v6=(),
                             proxy_marks=MARK, lan_interfaces=(lab.gateway.lan_if,))  # fmt: skip
        lab.gateway.install_tproxy(plan)
        tput: dict[tuple[str, int, bool], list[float]] = {}
        cps: dict[str, list[float]] = {}
        failed = dict.fromkeys(names, 0)
        for run in range(args.runs):
            for name in names:  # interleaved: noise hits both contenders alike
                stop = Contender(name, lab).start()
                try:
                    for streams in streams_list:
                        for reverse in (False, True):
                            tput.setdefault((name, streams, reverse), []).append(
                                iperf_tcp(lab, args.seconds, streams, reverse))
                    small = f"http://{lab.server.ip4}:{WEB_PORT}/small.txt"
                    rate, errors = connections_per_second(lab, small, args.requests,
                                                          args.concurrency)  # fmt: skip
                    cps.setdefault(name, []).append(rate)
                    failed[name] += errors
                finally:
                    stop()
                time.sleep(0.2)
            print(f"run {run + 1}/{args.runs} done", flush=True)
    report(args, tput, cps, streams_list)
    print("failed requests (ab), all runs:", failed)
    return 0


def report(args: argparse.Namespace, tput: dict[tuple[str, int, bool], list[float]],
           cps: dict[str, list[float]], streams_list: list[int]) -> None:  # fmt: skip
    print(f"\nSOCKS5 outbound -> microsocks; median of {args.runs} interleaved runs "
          "(shared, noisy 2-core machine: compare ratios, not absolutes)")
    print(f"throughput, Gbit/s, iperf3 {args.seconds}s ('down' = server to client)")
    print(f"{'streams':>8} {'dir':>5} {'trio-tproxy':>12} {'v2ray':>8} {'trio/v2ray':>11}")
    for streams in streams_list:
        for reverse in (False, True):
            t = statistics.median(tput[("trio-tproxy", streams, reverse)])
            v = statistics.median(tput[("v2ray", streams, reverse)])
            print(f"{streams:>8} {'down' if reverse else 'up':>5} {t:12.2f} {v:8.2f} {t / v:11.2f}")
    t, v = statistics.median(cps["trio-tproxy"]), statistics.median(cps["v2ray"])
    print(f"connections/s (ab -n {args.requests} -c {args.concurrency}, "
          "one connection per request)")
    print(f"{'':>14} {'trio-tproxy':>12} {'v2ray':>8} {'trio/v2ray':>11}")
    print(f"{'':>14} {t:12.0f} {v:8.0f} {t / v:11.2f}")
    print("all runs:", {k: [round(x) for x in xs] for k, xs in cps.items()})


if __name__ == "__main__":
    raise SystemExit(main())
