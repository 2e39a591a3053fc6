"""Idle memory of ``trio-tproxy run`` and what it imports (not collected by pytest).

    python bench/bench_memory.py [--configs bench,main] [--starts 3] [--top 15]
                                 [--src before=/path/to/old/src] [--tracemalloc]
                                 [--no-bytecode]

For each configuration (``bench``: the one bench_gateway.py runs, a tproxy inbound and
a direct outbound; ``main``: conf/main.toml; or a path to a TOML file), the proxy is
started ``--starts`` times, each in a scratch network namespace of its own, and once
it has said "ready:" and settled, the RSS and PSS of its process and every process it
forked (smaps_rollup) are read; the table shows medians. A first start, not measured,
compiles the modules to bytecode (kept in a temporary PYTHONPYCACHEPREFIX, as an
installed package has its .pyc files; ``--no-bytecode`` compiles them at every start,
as under PYTHONDONTWRITEBYTECODE=1) and the rules (the compile cache). Then one start with
``PYTHONPROFILEIMPORTTIME=1`` lists what ``run`` imported: modules, import time, and the
top-level packages by their own import time (a package a config does not use should
not be on that list). ``--tracemalloc`` builds the runtime in this process and prints
the source files that hold the most memory afterwards (imports included).

``--src NAME=SRC`` measures the proxy run from another source tree too (its
PYTHONPATH), e.g. the code before a change: ``git archive HEAD src | tar -x -C /tmp/x``.
Needs root (network namespaces; IP_TRANSPARENT inside them).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from common import trio_tproxy_config
from netlab import Netns, requirements_met, scratch_namespace
from netlab.proxy import ProxyProcess

ROOT = Path(__file__).resolve().parent.parent
SETTLE = 1.0  # s after "ready:": background tasks (health probes, geodata) start
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def config_text(name: str) -> str:
    if name == "bench":
        return trio_tproxy_config('["tcp", "udp"]')
    if name == "main":
        return (ROOT / "conf" / "main.toml").read_text()
    return Path(name).read_text()


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (workers forked by a supervisor)."""
    found = [pid]
    for pid_ in found:
        for task in Path(f"/proc/{pid_}/task").iterdir():
            children = (task / "children").read_text().split()
            found.extend(int(child) for child in children if int(child) not in found)
    return found


def smaps(pid: int) -> dict[str, float]:
    """Fields of /proc/PID/smaps_rollup, in KB."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        fields[key] = float(rest.split()[0])
    return fields


def tree_memory(pid: int) -> dict[str, float]:
    """MB: RSS of the first process, and RSS, PSS, private dirty summed over the tree."""
    tree = [smaps(p) for p in process_tree(pid)]
    return {
        "procs": len(tree),
        "rss": tree[0]["Rss"] / 1024,
        "rss_all": sum(m["Rss"] for m in tree) / 1024,
        "pss_all": sum(m["Pss"] for m in tree) / 1024,
        "dirty_all": sum(m["Private_Dirty"] for m in tree) / 1024,
    }


Env = dict[str, str | None]  # variables for the proxy: None removes one


def start(netns: Netns, text: str, src: str | None, env: Env) -> ProxyProcess:
    """The proxy in ``netns``, run from ``src`` (else this tree), ``env`` applied."""
    return ProxyProcess(netns, text, name="mem",
                        env={**({"PYTHONPATH": src} if src is not None else {}), **env})


def one_start(text: str, src: str | None, env: Env) -> tuple[dict[str, float], str]:
    """Start in a fresh namespace, wait until ready and settled; memory and the log."""
    with scratch_namespace(prefix="bmem") as netns:
        proxy = start(netns, text, src, env)
        try:
            proxy.wait_ready(timeout=60)
            time.sleep(SETTLE)
            return tree_memory(proxy.pid), proxy.log()
        finally:
            proxy.stop()


def imports(log: str) -> tuple[int, float, list[tuple[str, float, int]]]:
    """From a PYTHONPROFILEIMPORTTIME log: modules, total ms, and per top-level
    package (own time in ms, modules) by time."""
    by_root: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    total = 0.0
    count = 0
    for match in IMPORT_LINE.finditer(log):
        own_us, cumulative_us, indent, name = match.groups()
        count += 1
        if not indent.strip(" ") and len(indent) == 1:  # a top-level import
            total += int(cumulative_us) / 1000
        root = name.split(".")[0]
        by_root[root][0] += int(own_us) / 1000
        by_root[root][1] += 1
    ranked = sorted(((r, v[0], int(v[1])) for r, v in by_root.items()), key=lambda t: -t[1])
    return count, total, ranked


def trace_allocations(text: str, top: int) -> None:
    """Build the runtime in this process under tracemalloc; the files holding most."""
    import tracemalloc

    tracemalloc.start()
    from trio_tproxy.app import Gateway  # noqa: F401 - what `run` imports
    from trio_tproxy.config import load_config
    from trio_tproxy.router_cache import RouterCache
    from trio_tproxy.runtime import Runtime

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mem.toml"
        path.write_text(text)
        cwd = os.getcwd()
        os.chdir(ROOT)
        try:
            runtime = Runtime.build(load_config(path), router_cache=RouterCache.default())
        finally:
            os.chdir(cwd)
    snapshot = tracemalloc.take_snapshot()
    stats = snapshot.statistics("filename")
    print(f"  tracemalloc: {sum(s.size for s in stats) / 1e6:.1f} MB traced; top files:")
    for stat in stats[:top]:
        name = stat.traceback[0].filename
        short = re.sub(r".*/(site-packages|lib/python3\.\d+|src)/", "", name)
        print(f"    {stat.size / 1024:8.0f} KB  {stat.count:7d} blocks  {short}")
    del runtime


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--configs", default="bench,main", help="comma-separated: bench, main, or TOML paths"
    )
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--top", type=int, default=15, help="packages / files listed")
    parser.add_argument(
        "--src",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="also measure the proxy run from the source tree SRC",
    )
    parser.add_argument("--tracemalloc", action="store_true")
    parser.add_argument(
        "--no-bytecode",
        action="store_true",
        help="compile every module from source at each start (as PYTHONDONTWRITEBYTECODE=1)",
    )
    args = parser.parse_args()
    reason = requirements_met()
    if reason:
        print(f"cannot run: {reason}")
        return 1
    os.chdir(ROOT)  # conf/main.toml names geodata/ and rules/ relative to the checkout
    trees: list[tuple[str, str | None]] = [("this", None)]
    trees += [(n, str(Path(s).resolve())) for n, _, s in (x.partition("=") for x in args.src)]
    with tempfile.TemporaryDirectory(prefix="bench-memory-pyc-") as pycache:
        env = bytecode_env(pycache, compiled=not args.no_bytecode)
        for name in args.configs.split(","):
            measure(name, trees, env, args)
    return 0


def bytecode_env(pycache: str, *, compiled: bool) -> Env:
    """An installed package runs from .pyc files; a source tree under
    PYTHONDONTWRITEBYTECODE=1 compiles each module at every start (~1 MB more RSS left
    behind, ~100 ms more CPU): keep compiled modules under ``pycache`` unless asked."""
    if not compiled:
        return {"PYTHONDONTWRITEBYTECODE": "1"}
    return {"PYTHONDONTWRITEBYTECODE": None, "PYTHONPYCACHEPREFIX": pycache}


def measure(name: str, trees: list[tuple[str, str | None]], env: Env,
            args: argparse.Namespace) -> None:  # fmt: skip
    text = config_text(name)
    for tree, src in trees:
        one_start(text, src, env)  # compiles the modules (bytecode) and the rules (cache)
        runs = [one_start(text, src, env)[0] for _ in range(args.starts)]

        def med(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        print(f"{name} config, {tree} tree: medians of {args.starts} starts, "
              f"{med('procs'):.0f} process(es): RSS {med('rss'):.1f} MB (all "
              f"{med('rss_all'):.1f}), PSS all {med('pss_all'):.1f} MB, private dirty "
              f"{med('dirty_all'):.1f} MB; PSS of each start "
              + ", ".join(f"{r['pss_all']:.1f}" for r in runs))  # fmt: skip
        _, log = one_start(text, src, {**env, "PYTHONPROFILEIMPORTTIME": "1"})
        count, total, ranked = imports(log)
        print(f"  imports: {count} modules, {total:.0f} ms (under -X importtime); "
              "top packages by own import time:")  # fmt: skip
        for root, ms, modules in ranked[: args.top]:
            print(f"    {ms:7.1f} ms  {modules:4d} modules  {root}")
    if args.tracemalloc:
        trace_allocations(text, args.top)


if __name__ == "__main__":
    sys.exit(main())
