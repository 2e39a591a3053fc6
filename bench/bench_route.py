"""Routing speed: compile time, decisions/s, GeoIP lookups/s, memory of the compiled set.

    python bench/bench_route.py [--mmdb FILE] [--rules DIR] [--runs 5]

Uses the shipped rules/ and a country DB built from Tor's geoip files (built into a
temporary directory if --mmdb is not given and /usr/share/tor/geoip exists; otherwise
geoip:cn is left out). Prints medians of --runs runs, and ratios against a naive
reference measured in the same run (every regexp searched per flow, and a linear scan
over the CIDRs), as bench/ files do.
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import random
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from trio_tproxy.config import parse_config_text
from trio_tproxy.geo import GeoData, build_country_mmdb
from trio_tproxy.route import FlowFacts, IpSet, Router, compile_router

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
    rates = []
    for _ in range(runs):
        gc.collect()
        began = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - began))
    return statistics.median(rates)


def make_router(rules: Path, mmdb: Path | None, cache_size: int) -> Router:
    cfg = parse_config_text(CONFIG.replace("{cn}", ', "geoip:cn"' if mmdb else ""))
    geo = GeoData(rules, mmdb or Path("/nonexistent"))
    return compile_router(cfg, geo, cache_size=cache_size)


def bench_compile(rules: Path, mmdb: Path | None, runs: int) -> tuple[float, float]:
    times = []
    for _ in range(runs):
        gc.collect()
        began = time.perf_counter()
        make_router(rules, mmdb, 0)
        times.append(time.perf_counter() - began)
    gc.collect()
    tracemalloc.start()
    router = make_router(rules, mmdb, 0)
    gc.collect()
    size, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del router
    return statistics.median(times), size / 2**20


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
    rnd = random.Random(7)
    ips = [ipaddress.IPv4Address(rnd.getrandbits(32)) for _ in range(50_000)]
    ips += [ipaddress.IPv6Address((0x2400 << 112) | rnd.getrandbits(112)) for _ in range(10_000)]
    fast = median_rate(lambda: sum(1 for ip in ips if ip in ipset) * 0 + len(ips), runs)
    return fast, len(ips)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mmdb", type=Path)
    ap.add_argument("--rules", type=Path, default=ROOT / "rules")
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
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
    print(f"compile: {compile_s * 1000:.0f} ms (median of {args.runs}); "
          f"compiled router: {mem_mib:.1f} MiB (tracemalloc); index {router.domains.sizes()}")
    rnd = random.Random(1)
    mix = [rnd.choice(HITS if rnd.random() < 0.5 else MISSES) for _ in range(20_000)]
    # Mostly distinct names: what a cache cannot help with.
    distinct = [f"h{i}.{rnd.choice(MISSES + HITS)}" for i in range(20_000)]
    for label, domains in (("50/50 hit/miss mix", mix), ("20k distinct names", distinct)):
        rate = bench_decide(router, domains, args.runs)
        cached = bench_decide(make_router(args.rules, mmdb, 4096), domains, args.runs)
        print(f"decide, {label}: {rate:,.0f}/s without cache, {cached:,.0f}/s with LRU 4096")
    naive = bench_naive_regexps(router, mix[:2000], args.runs)
    print(f"reference: one alternation of all regexps alone: {naive:,.0f} searches/s "
          f"(decide is {bench_decide(router, mix, args.runs) / naive:.0f}x faster)")
    ip_rule = router.rules[-1].conditions[-1]
    rate, _ = bench_ips(ip_rule.merged, args.runs)  # type: ignore[union-attr]
    print(f"ip set lookups (geoip:private+cn, {ip_rule.merged!r}): {rate:,.0f}/s")  # type: ignore[union-attr]
    ip_facts = [FlowFacts("tcp", ipaddress.IPv4Address(random.Random(i).getrandbits(32)), 443)
                for i in range(20_000)]
    rate = median_rate(lambda: sum(1 for f in ip_facts if router.decide(f)) , args.runs)
    print(f"decide, IP targets (3 domain rules skipped, ip rule probed): {rate:,.0f}/s")
    tmp.cleanup()


if __name__ == "__main__":
    main()
