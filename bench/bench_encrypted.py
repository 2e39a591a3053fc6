"""The encrypted outbounds: trio-tproxy against v2ray, both in front of the same servers.

A lab (client -- gateway -- server namespaces), fresh for every contender in every run
(TIME_WAIT left by one contender's ``ab`` would slow the next one's: v2ray's
connections/s fell from 5,420 to 2,178 over three runs in one lab). In the server
namespace: ss-server
(shadowsocks-libev, aes-128-gcm), trojan-gfw (TLS with a test CA), iperf3 and nginx. The
gateway diverts LAN TCP with TPROXY either to trio-tproxy or to v2ray (Debian's
``v2ray``: dokodemo-door + sockopt.tproxy, a ``shadowsocks`` or ``trojan`` outbound with
the same mark and the same server); sniffing off. Interleaved run by run, per protocol:

* throughput: iperf3, 1 stream, up and down (Gbit/s), and the gateway process's CPU
  time per Gbit moved (user + system seconds from /proc/PID/stat over the iperf run);
* connections per second: ``ab`` (a new connection per request: a TPROXY accept, a new
  upstream connection - for trojan a TLS handshake - and the server's connect).

On this 2-core box the single-threaded ss-server and trojan-gfw are often the
bottleneck for both contenders: read the CPU-per-Gbit column for what the gateway costs.
``--protocols direct`` is the floor under both: the same workloads with no upstream proxy
(trio-tproxy's ``direct`` outbound, v2ray's ``freedom``), straight to the servers.

    python bench/bench_encrypted.py [--runs 3] [--seconds 5] [--requests 2000] [--concurrency 16]
                                     [--workers 2]  (also trio-tproxy with N worker processes)
                                     [--trio before=/path/to/old/src]  (one more contender)

Needs root; touches only the namespaces it creates. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from common import (
    IPERF_PORT,
    MARK,
    PORT,
    connections_per_second,
    cpu_seconds,
    dokodemo_inbound,
    iperf_tcp,
    start_v2ray,
    trio_tproxy_config,
)
from netlab import Lab, requirements_met
from netlab.proxy import ProxyProcess
from netlab.servers import (
    make_certificate,
    start_http_server,
    start_iperf3_server,
    wait_listening,
)
from trio_tproxy.firewall.plan import DiversionPlan

SS_PORT, TROJAN_PORT, WEB_PORT = 8388, 443, 8080
SS_METHOD, SS_PASSWORD, TROJAN_PASSWORD = "aes-128-gcm", "bench-ss", "bench-trojan"
SNI = "trojan.bench.test"


def trio_outbound(protocol: str, server: str, ca: Path) -> str:
    if protocol == "direct":
        return f'tag = "direct"\ntype = "direct"\nmark = {MARK}'
    if protocol == "shadowsocks":
        return (f'tag = "ss"\ntype = "shadowsocks"\nserver = "{server}:{SS_PORT}"\n'
                f'method = "{SS_METHOD}"\npassword = "{SS_PASSWORD}"\nmark = {MARK}')  # fmt: skip
    return (f'tag = "tj"\ntype = "trojan"\nserver = "{server}:{TROJAN_PORT}"\n'
            f'password = "{TROJAN_PASSWORD}"\nsni = "{SNI}"\nca = "{ca}"\n'
            f"mark = {MARK}")  # fmt: skip


def v2ray_outbound(protocol: str, server: str, ca: Path) -> dict[str, Any]:
    sockopt = {"sockopt": {"mark": MARK}}
    if protocol == "direct":
        return {"protocol": "freedom", "streamSettings": sockopt}
    if protocol == "shadowsocks":
        server_settings = {"address": server, "port": SS_PORT, "method": SS_METHOD,
                           "password": SS_PASSWORD}  # fmt: skip
        return {"protocol": "shadowsocks", "streamSettings": sockopt,
                "settings": {"servers": [server_settings]}}  # fmt: skip
    return {
        "protocol": "trojan",
        "settings": {"servers": [{"address": server, "port": TROJAN_PORT,
                                  "password": TROJAN_PASSWORD}]},
        "streamSettings": {**sockopt, "security": "tls", "tlsSettings": {
            "serverName": SNI, "alpn": ["http/1.1"],
            "certificates": [{"usage": "verify", "certificateFile": str(ca)}]}},
    }  # fmt: skip


def v2ray_config(protocol: str, server: str, ca: Path) -> dict[str, Any]:
    return {
        "log": {"loglevel": "warning"},
        # As bench_socks.py: 0 closes at once once one side is done, as a FIN passed on
        # does in trio-tproxy, so both do the same work per connection.
        "policy": {"levels": {"0": {"uplinkOnly": 0, "downlinkOnly": 0}}},
        "inbounds": [dokodemo_inbound("tcp")],
        "outbounds": [v2ray_outbound(protocol, server, ca)],
    }


def start(
    name: str, protocol: str, lab: Lab, ca: Path
) -> tuple[Callable[[], list[int]], Callable[[], None]]:
    """Start one contender on the gateway; its processes and how to stop it."""
    server = lab.server.ip4
    if name.startswith("trio"):
        extra = '[policy]\nhandshake = "10s"\n'
        if name.startswith("trio-w"):  # trio-w2: [process] workers = 2
            extra += f"[process]\nworkers = {int(name.removeprefix('trio-w'))}\n"
        config = trio_tproxy_config('"tcp"', trio_outbound(protocol, server, ca), extra)
        # --trio NAME=SRC: that tree's code
        env = {"PYTHONPATH": SOURCES[name]} if name in SOURCES else None
        proxy = ProxyProcess(lab.gateway, config, name=f"bench-{protocol}", env=env)
        proxy.wait_ready()

        def stop_trio() -> None:
            if proxy.stop() != 0:
                raise RuntimeError(f"trio-tproxy did not exit cleanly:\n{proxy.log()}")

        return proxy.pids, stop_trio
    process = start_v2ray(lab, v2ray_config(protocol, server, ca))

    def stop() -> None:
        process.terminate()
        process.wait(10)

    return (lambda: [process.pid]), stop


def start_servers(lab: Lab, root: Path) -> Path:
    s = lab.server
    (root / "small.txt").write_text("sixteen bytes!!\n")
    start_http_server(s, root, port=WEB_PORT)
    start_iperf3_server(s, IPERF_PORT)
    ss = s.popen(["ss-server", "-s", s.ip4, "-p", str(SS_PORT), "-k", SS_PASSWORD, "-m", SS_METHOD],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_listening(s, SS_PORT, process=ss)
    cert = make_certificate(s.workdir, (SNI,))
    conf = s.workdir / "trojan.json"
    conf.write_text(json.dumps({
        "run_type": "server", "local_addr": s.ip4, "local_port": TROJAN_PORT,
        "remote_addr": s.ip4, "remote_port": WEB_PORT, "password": [TROJAN_PASSWORD],
        "log_level": 3, "ssl": {"cert": str(cert.path), "key": str(cert.key), "alpn": ["http/1.1"]},
    }))  # fmt: skip
    trojan = s.popen(["trojan", "-c", str(conf)], stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)  # fmt: skip
    wait_listening(s, TROJAN_PORT, process=trojan)
    return cert.path


Key = tuple[str, str, bool]  # protocol, contender, reverse
SOURCES: dict[str, str] = {}  # --trio NAME=SRC: contender trio-NAME -> its source tree


@contextlib.contextmanager
def fresh_lab() -> Iterator[tuple[Lab, Path]]:
    """New namespaces with the servers and the TPROXY diversion; the test CA's path."""
    with Lab.create(prefix="bench") as lab, tempfile.TemporaryDirectory() as root:
        ca = start_servers(lab, Path(root))
        plan = DiversionPlan(tproxy_port=PORT, tproxy_udp=False, bypass_v4=(), bypass_v6=(),
                             proxy_marks=MARK, lan_interfaces=(lab.gateway.lan_if,))  # fmt: skip
        lab.gateway.install_tproxy(plan)
        yield lab, ca


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--protocols", default="shadowsocks,trojan",
                        help="comma-separated: shadowsocks, trojan, direct (no upstream proxy)")
    parser.add_argument("--workers", type=int, default=0,
                        help="also run trio-tproxy with [process] workers = N (as trio-wN)")
    parser.add_argument("--trio", action="append", default=[], metavar="NAME=SRC",
                        help="also run trio-tproxy from the source tree SRC as trio-NAME "
                             "(e.g. the code before a change)")  # fmt: skip
    args = parser.parse_args()
    reason = requirements_met()
    tools = ("ss-server", "trojan", "iperf3", "ab", "v2ray", "openssl")
    missing = [tool for tool in tools if not shutil.which(tool)]
    if reason or missing:
        print(f"cannot run: {reason or 'missing ' + ', '.join(missing)}")
        return 1
    protocols = args.protocols.split(",")
    names = ("trio-tproxy", "v2ray") + ((f"trio-w{args.workers}",) if args.workers > 1 else ())
    for spec in args.trio:
        name, _, src = spec.partition("=")
        SOURCES[f"trio-{name}"] = str(Path(src).resolve())
        names += (f"trio-{name}",)
    tput: dict[Key, list[float]] = {}
    cpu: dict[Key, list[float]] = {}
    cps: dict[tuple[str, str], list[float]] = {}
    conn_cpu: dict[tuple[str, str], list[float]] = {}  # gateway CPU us per connection
    failed: dict[tuple[str, str], int] = {}
    for run in range(args.runs):
        for protocol in protocols:
            for name in names:  # interleaved: noise hits both contenders alike
                with fresh_lab() as (lab, ca):
                    pids, stop = start(name, protocol, lab, ca)
                    try:
                        for reverse in (False, True):
                            before = cpu_seconds(pids)
                            gbits = iperf_tcp(lab, args.seconds, 1, reverse)
                            used = cpu_seconds(pids) - before
                            tput.setdefault((protocol, name, reverse), []).append(gbits)
                            # CPU seconds per Gbit moved = used / (gbits * seconds)
                            cpu.setdefault((protocol, name, reverse), []).append(
                                used / (gbits * args.seconds))
                        small = f"http://{lab.server.ip4}:{WEB_PORT}/small.txt"
                        before = cpu_seconds(pids)
                        rate, errors = connections_per_second(lab, small, args.requests,
                                                              args.concurrency)  # fmt: skip
                        cps.setdefault((protocol, name), []).append(rate)
                        conn_cpu.setdefault((protocol, name), []).append(
                            (cpu_seconds(pids) - before) / args.requests * 1e6)
                        failed[(protocol, name)] = failed.get((protocol, name), 0) + errors
                    finally:
                        stop()
        print(f"run {run + 1}/{args.runs} done", flush=True)
    report(args, protocols, tput=tput, cpu=cpu, cps=cps, conn_cpu=conn_cpu)
    print("failed requests (ab), all runs:", {f"{p}/{n}": v for (p, n), v in failed.items()})
    return 0


def report(
    args: argparse.Namespace, protocols: list[str], *, tput: dict[Key, list[float]],
    cpu: dict[Key, list[float]], cps: dict[tuple[str, str], list[float]],
    conn_cpu: dict[tuple[str, str], list[float]],
) -> None:  # fmt: skip
    print(f"\nmedian of {args.runs} interleaved runs (shared 2-core machine: compare ratios)")
    print(f"iperf3 1 stream {args.seconds}s: Gbit/s, and gateway CPU seconds per Gbit moved")
    print(f"{'outbound':>12} {'dir':>5} {'trio':>12} {'trio Gb/s':>10} {'v2ray Gb/s':>11} "
          f"{'ratio':>6} {'trio cpu/Gb':>12} {'v2ray cpu/Gb':>13} {'ratio':>6}")  # fmt: skip
    trios = sorted({n for (_, n, _) in tput} - {"v2ray"})
    for protocol in protocols:
        for reverse in (False, True):
            v = statistics.median(tput[(protocol, "v2ray", reverse)])
            vc = statistics.median(cpu[(protocol, "v2ray", reverse)])
            for name in trios:
                t = statistics.median(tput[(protocol, name, reverse)])
                tc = statistics.median(cpu[(protocol, name, reverse)])
                print(f"{protocol:>12} {'down' if reverse else 'up':>5} {name:>12} {t:10.2f} "
                      f"{v:11.2f} {t / v:6.2f} {tc:12.3f} {vc:13.3f} {tc / vc:6.2f}")  # fmt: skip
    print(f"connections/s (ab -n {args.requests} -c {args.concurrency}), and the gateway's "
          "CPU per connection (us; the servers, nginx and ab share the machine's cores, so "
          "this is what sets the rate)")  # fmt: skip
    for protocol in protocols:
        v = statistics.median(cps[(protocol, "v2ray")])
        vc = statistics.median(conn_cpu[(protocol, "v2ray")])
        others = sorted({n for (p, n) in cps if p == protocol} - {"trio-tproxy", "v2ray"})
        for name in ["trio-tproxy", *others]:
            t = statistics.median(cps[(protocol, name)])
            tc = statistics.median(conn_cpu[(protocol, name)])
            print(f"{protocol:>12} {name:>12} {t:8.0f}  v2ray {v:8.0f}  ratio {t / v:5.2f}   "
                  f"CPU {tc:6.0f} us  v2ray {vc:6.0f} us  ratio {tc / vc:5.2f}")  # fmt: skip
    print("all runs:", {f"{p}/{n}": [round(x) for x in xs] for (p, n), xs in cps.items()})


if __name__ == "__main__":
    raise SystemExit(main())
