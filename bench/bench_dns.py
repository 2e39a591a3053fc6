"""Cached DNS answers: trio-tproxy's dns.listen listener against dnsmasq, with dnsperf.

In one lab, dnsmasq in the server namespace serves host records; trio-tproxy on the
gateway listens on the LAN address and uses that dnsmasq as its only upstream. After
one pass that fills trio-tproxy's cache, dnsperf in the client namespace asks the same
names of each, interleaved run by run (machine noise hits both alike):

* saturated: ``-q 100`` queries outstanding; queries per second and latency;
* paced: ``-Q RATE`` queries per second; latency at a load both sustain.

Two name sets: 1,000 names, where every query repeats within a second and trio-tproxy
answers from its ready-reply memo, and 20,000 names, where the memo (4,096 replies)
never hits and every answer is built from the cache entry: the honest per-query cost.

Latency percentiles come from dnsperf's per-query report (``-v``). Reported: medians
of the runs, and trio-tproxy / dnsmasq ratios. dnsmasq answers from its own host
records, i.e. from memory: the same work as a cache hit.

    python bench/bench_dns.py [--runs 3] [--seconds 5] [--rate 2000]

Needs root; touches only the namespaces it creates. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess

from netlab import Lab, requirements_met
from netlab.proxy import ProxyProcess

NAME_SETS = {"1k names": 1000, "20k names": 20000}
NAMES = max(NAME_SETS.values())
UPSTREAM = "10.77.3.2"


def config(lab: Lab) -> str:
    return f"""
[log]
level = "info"
access = false
[[inbounds]]
tag = "lan"
type = "tproxy"
port = 12345
network = "tcp"
[[outbounds]]
tag = "direct"
type = "direct"
[dns]
listen = ["{lab.gateway.lan_ip4}:53"]
cache_size = {2 * NAMES}
[[dns.servers]]
address = "{UPSTREAM}"
"""


def start_dnsmasq(lab: Lab) -> subprocess.Popen[str]:
    hosts = lab.server.workdir / "bench.hosts"
    hosts.write_text("".join(f"10.88.{i // 256}.{i % 256} n{i}.bench.example\n"
                             for i in range(NAMES)))  # fmt: skip
    return lab.server.popen(
        ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
         f"--addn-hosts={hosts}", "--bind-interfaces", f"--listen-address={UPSTREAM}",
         "--local-ttl=3600", "--user=root", "--pid-file=", "--cache-size=10000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def dnsperf(lab: Lab, server: str, seconds: float, count: int, *extra: str) -> dict[str, float]:
    """One dnsperf run from the client namespace: qps, loss and latency percentiles."""
    names = lab.client.workdir / f"names-{count}.txt"
    if not names.exists():
        names.write_text("".join(f"n{i}.bench.example A\n" for i in range(count)))
    out = lab.client.workdir / "dnsperf.out"
    with out.open("w") as sink:
        argv = ["dnsperf", "-s", server, "-d", str(names), "-l", str(seconds), "-v", *extra]
        lab.client.popen(argv, stdout=sink, stderr=subprocess.STDOUT).wait(seconds + 60)
    text = out.read_text()
    latencies = sorted(float(m) for m in re.findall(r"^> NOERROR \S+ A (\S+)$", text, re.M))
    qps = re.search(r"Queries per second:\s+([\d.]+)", text)
    lost = re.search(r"Queries lost:\s+(\d+)", text)
    if qps is None or not latencies:
        raise RuntimeError(f"dnsperf against {server} failed:\n{text[-2000:]}")

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    return {"qps": float(qps.group(1)), "lost": float(lost.group(1)) if lost else 0.0,
            "p50": pct(0.50), "p99": pct(0.99), "answers": float(len(latencies))}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--rate", type=int, default=2000, help="paced queries per second")
    args = parser.parse_args()
    if reason := requirements_met():
        print(f"cannot run: {reason}")
        return 1
    for tool in ("dnsmasq", "dnsperf"):
        if shutil.which(tool) is None:
            print(f"cannot run: {tool} is missing (scripts/setup installs it)")
            return 1
    with Lab.create(prefix="bench") as lab:
        start_dnsmasq(lab)
        proxy = ProxyProcess(lab.gateway, config(lab), name="bench-dns")
        proxy.wait_ready()
        gateway = lab.gateway.lan_ip4
        # fill the cache: every name once, gently
        warm = dnsperf(lab, gateway, 120, NAMES, "-n", "1", "-q", "20")
        if warm["answers"] < NAMES:
            raise RuntimeError(f"cache warm-up answered {warm['answers']:.0f} of {NAMES}")
        modes = {"saturated": ("-q", "100"), "paced": ("-Q", str(args.rate), "-q", "100")}
        results: dict[tuple[str, str, str], list[dict[str, float]]] = {}
        for _ in range(args.runs):
            for names, count in NAME_SETS.items():
                for mode, extra in modes.items():
                    for who, server in (("dnsmasq", UPSTREAM), ("trio-tproxy", gateway)):
                        results.setdefault((names, mode, who), []).append(
                            dnsperf(lab, server, args.seconds, count, *extra))
        proxy.stop()

    def med(names: str, mode: str, who: str, key: str) -> float:
        return statistics.median(r[key] for r in results[(names, mode, who)])

    print("Cached A queries, client -> gateway listener vs client -> dnsmasq; "
          f"median of {args.runs} runs of {args.seconds:g}s (shared, noisy 2-core machine)")
    print(f"{'names':>10} {'mode':>10} {'server':>12} {'qps':>9} {'lost':>6} {'p50 ms':>8} "
          f"{'p99 ms':>8}")  # fmt: skip
    for names in NAME_SETS:
        for mode in modes:
            for who in ("dnsmasq", "trio-tproxy"):
                print(f"{names:>10} {mode:>10} {who:>12} {med(names, mode, who, 'qps'):9.0f} "
                      f"{med(names, mode, who, 'lost'):6.0f} "
                      f"{med(names, mode, who, 'p50'):8.3f} {med(names, mode, who, 'p99'):8.3f}")
        sat = med(names, "saturated", "trio-tproxy", "qps") / med(
            names, "saturated", "dnsmasq", "qps")
        p99 = med(names, "paced", "trio-tproxy", "p99") / med(names, "paced", "dnsmasq", "p99")
        print(f"{names}: trio-tproxy/dnsmasq saturated qps {sat:.2f}, "
              f"p99 latency at {args.rate} qps {p99:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
