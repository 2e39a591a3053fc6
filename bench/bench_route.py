"""Routing speed: compile time, decisions/s, GeoIP lookups/s, memory of the compiled set.

    python bench/bench_route.py [--mmdb FILE] [--rules DIR] [--runs 5]

Uses the shipped rules/ and a country DB built from Tor's geoip files (built into a
temporary directory if --mmdb is not given and /usr/share/tor/geoip exists; otherwise
geoip:cn is left out). `trio-tproxy match` is timed as a user runs it (a new process),
without, before and with its compile cache (trio_tproxy/router_cache.py). Prints medians of
--runs runs, and ratios against a naive reference measured in the same run (every regexp
searched per flow, and a linear scan over the CIDRs), as bench/ files do.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from trio_tproxy.config import parse_config_text
from trio_tproxy.geo import CountryDB, GeoData, build_country_mmdb
from trio_tproxy.route import FlowFacts, IpSet, Router, compile_router
from trio_tproxy.route.conditions import IpCondition
from trio_tproxy.router_cache import CACHE_ENV

ROOT = Path(__file__).resolve().parent.parent
CONFIG = """
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = 12345
[[outbounds]]
tag = "direct"
type = "direct"
[[outbounds]]
tag = "proxy"
type = "socks"
server = "192.0.2.10:1080"
[[outbounds]]
tag = "block"
type = "block"
[routing]
domain_strategy = "as_is"
[[routing.rules]]
domain = ["geosite:category-ads-all"]
outbound = "block"
[[routing.rules]]
domain = ["geosite:cn"]
outbound = "direct"
[[routing.rules]]
domain = ["geosite:geolocation-!cn"]
outbound = "proxy"
[[routing.rules]]
ip = ["geoip:private"{cn}]
outbound = "direct"
"""
HITS = [
    "www.google.com", "img.alicdn.com", "ad.doubleclick.net", "api.weixin.qq.com",
    "r3---sn-abc.googlevideo.com", "www.baidu.com", "github.com", "91porn.com",
    "edge-1.aqdk123.com", "pagead2.googlesyndication.com",
]  # fmt: skip
MISSES = [
    "www.example.com", "foo.bar.baz.example.org", "host-17.internal.example.net",
    "cdn.someshop.de", "mail.example.co.uk", "a.b.c.d.e.f.example.io", "localhost.localdomain",
    "x.y", "service.company.local", "update.vendor-cdn.xyz",
]  # fmt: skip


def median_rate(fn: Callable[[], int], runs: int) -> float:
    """Operations per second of CPU time (process_time: the bench machine may be shared,
    and wall time would measure the neighbours), median of ``runs``."""
    rates = []
    for _ in range(runs):
        gc.collect()
        began = time.process_time()
        n = fn()
        rates.append(n / (time.process_time() - began))
    return statistics.median(rates)


def make_router(rules: Path, mmdb: Path | None, cache_size: int = 0) -> Router:
    cfg = parse_config_text(CONFIG.replace("{cn}", ', "geoip:cn"' if mmdb else ""))
    geo = GeoData(rules, mmdb or Path("/nonexistent"))
    return compile_router(cfg, geo, cache_size=cache_size)


def bench_compile(rules: Path, mmdb: Path | None, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        gc.collect()
        began = time.process_time()
        make_router(rules, mmdb, 0)
        times.append(time.process_time() - began)
    gc.collect()
    tracemalloc.start()
    router = make_router(rules, mmdb, 0)
    gc.collect()
    size, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del router
    return statistics.median(times), size / 2**20


def compile_breakdown(rules: Path, mmdb: Path | None) -> str:
    """Where compile time goes: list files, country extraction (with the range index of
    `geodata build` databases, and by walking the tree as for GeoLite2/DB-IP files)."""
    geo = GeoData(rules, mmdb or Path("/nonexistent"))
    began = time.process_time()
    sizes = [len(geo.geosite(n)) for n in ("category-ads-all", "cn", "geolocation-!cn")]
    lists_s = time.process_time() - began
    parts = [f"geosite lists {lists_s * 1000:.0f} ms ({sum(sizes):,} rules)"]
    if mmdb is not None:
        began = time.process_time()
        geo.prefetch_countries({"cn"})
        parts.append(f"geoip:cn via index {(time.process_time() - began) * 1000:.0f} ms")
        db = CountryDB(mmdb)
        db.record_codes()
        db._index = None  # what a database without trio-tproxy's index costs
        began = time.process_time()
        db.extract({"CN"})
        parts.append(f"via tree walk {(time.process_time() - began) * 1000:.0f} ms")
    return ", ".join(parts)


def bench_decide(router: Router, domains: list[str], runs: int) -> float:
    facts = [FlowFacts("tcp", None, 443, domain=d) for d in domains]
    decide = router.decide

    def run() -> int:
        for f in facts:
            decide(f)
        return len(facts)

    return median_rate(run, runs)


def bench_naive_regexps(router: Router, domains: list[str], runs: int) -> float:
    import re

    patterns = [p for g in router.domains._groups for p in g.regexps]
    combined = re.compile("|".join(f"(?:{p})" for p in patterns))
    return median_rate(lambda: sum(1 for d in domains if combined.search(d) or 1), runs)


def bench_ips(ipset: IpSet, runs: int) -> tuple[float, float]:
    """Lookups/s in the compiled set, and for reference a linear scan over its ranges."""
    rnd = random.Random(7)
    ips: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [
        ipaddress.IPv4Address(rnd.getrandbits(32)) for _ in range(50_000)
    ]
    ips += [ipaddress.IPv6Address((0x2400 << 112) | rnd.getrandbits(112)) for _ in range(10_000)]
    contains = ipset.__contains__

    def run() -> int:
        for ip in ips:
            contains(ip)
        return len(ips)

    ranges = list(zip(ipset._v4_starts, ipset._v4_ends, strict=True))
    probe = [int(ip) for ip in ips[:300] if ip.version == 4]

    def scan() -> int:
        for v in probe:
            any(a <= v <= b for a, b in ranges)
        return len(probe)

    linear = median_rate(scan, runs)
    return median_rate(run, runs), linear


def bench_match(rules: Path, mmdb: Path | None, runs: int, workdir: Path) -> str:
    """Wall time of `trio-tproxy match` as a user runs it: a fresh interpreter, the
    config read, the router compiled (or loaded from the compile cache), one answer."""
    config = workdir / "match.toml"
    geodata = f'[geodata]\nrules_dir = "{rules}"\ngeoip = "{mmdb or "/nonexistent"}"\n'
    config.write_text(geodata + CONFIG.replace("{cn}", ', "geoip:cn"' if mmdb else ""))
    command = [sys.executable, "-m", "trio_tproxy", "match", "www.google.com", "-c", str(config)]

    def wall(cache: str) -> float:
        env = {**os.environ, CACHE_ENV: cache}
        began = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
        return time.perf_counter() - began

    def python_alone() -> float:
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        return time.perf_counter() - began

    times: dict[str, list[float]] = {"uncached": [], "cold cache": [], "warm cache": []}
    baseline = []
    for i in range(runs):  # interleaved, so drifts in machine speed hit all alike
        times["uncached"].append(wall("off"))
        cache = workdir / f"cache{i}"
        times["cold cache"].append(wall(str(cache)))
        times["warm cache"].append(wall(str(cache)))
        baseline.append(python_alone())
    parts = [f"{k} {statistics.median(v) * 1000:.0f} ms" for k, v in times.items()]
    parts.append(f"python -c pass {statistics.median(baseline) * 1000:.0f} ms")
    return ", ".join(parts)


def calibration(runs: int) -> str:
    """A machine yardstick, since figures here come from shared, noisy VMs: CPython 3.11
    on a current desktop runs ``sum(range(1000))`` in ~9 us."""
    times = []
    for _ in range(runs):
        began = time.process_time()
        for _ in range(2000):
            sum(range(1000))
        times.append((time.process_time() - began) / 2000)
    return f"calibration: sum(range(1000)) takes {statistics.median(times) * 1e6:.1f} us here"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mmdb", type=Path)
    ap.add_argument("--rules", type=Path, default=ROOT / "rules")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(calibration(args.runs))
    tmp = tempfile.TemporaryDirectory()
    mmdb = args.mmdb
    if mmdb is None and Path("/usr/share/tor/geoip").exists():
        mmdb = Path(tmp.name) / "country.mmdb"
        stats = build_country_mmdb(
            [Path("/usr/share/tor/geoip"), Path("/usr/share/tor/geoip6")], mmdb
        )
        print(f"geodata build (Tor files): {stats}")
    compile_s, mem_mib = bench_compile(args.rules, mmdb, args.runs)
    router = make_router(args.rules, mmdb, 0)
    print(
        f"compile: {compile_s * 1000:.0f} ms CPU (median of {args.runs}); "
        f"compiled router: {mem_mib:.1f} MiB (tracemalloc); index {router.domains.sizes()}"
    )
    print(f"compile breakdown: {compile_breakdown(args.rules, mmdb)}")
    match = bench_match(args.rules, mmdb, args.runs, Path(tmp.name))
    print(f"match, wall (median of {args.runs}): {match}")
    rnd = random.Random(1)
    mix = [rnd.choice(HITS if rnd.random() < 0.5 else MISSES) for _ in range(20_000)]
    # Mostly distinct names: what a cache cannot help with.
    distinct = [f"h{i}.{rnd.choice(MISSES + HITS)}" for i in range(20_000)]
    for label, domains in (("50/50 hit/miss mix", mix), ("20k distinct names", distinct)):
        rate = bench_decide(router, domains, args.runs)
        cached = bench_decide(make_router(args.rules, mmdb, 4096), domains, args.runs)
        print(f"decide, {label}: {rate:,.0f}/s without cache, {cached:,.0f}/s with LRU 4096")
    naive = bench_naive_regexps(router, mix[:2000], args.runs)
    print(
        f"reference: one alternation of all regexps alone: {naive:,.0f} searches/s "
        f"(decide is {bench_decide(router, mix, args.runs) / naive:.0f}x faster)"
    )
    ip_rule = router.rules[-1].conditions[-1]
    assert isinstance(ip_rule, IpCondition)
    rate, linear = bench_ips(ip_rule.merged, args.runs)
    print(
        f"ip set lookups (geoip:private+cn, {ip_rule.merged!r}): {rate:,.0f}/s "
        f"({rate / linear:,.0f}x a linear scan of the ranges)"
    )
    rnd = random.Random(3)
    ip_facts = [
        FlowFacts("tcp", ipaddress.IPv4Address(rnd.getrandbits(32)), 443) for _ in range(20_000)
    ]

    def decide_ips() -> int:
        for f in ip_facts:
            router.decide(f)
        return len(ip_facts)

    rate = median_rate(decide_ips, args.runs)
    print(f"decide, IP targets (3 domain rules skipped, ip rule probed): {rate:,.0f}/s")
    tmp.cleanup()


if __name__ == "__main__":
    main()
