"""/metrics: the Prometheus text exposition format (version 0.0.4), built per scrape.

Counters come from where the gateway already counts (the flow tracker, the UDP
services, the DNS splitter, the health book); nothing is counted for Prometheus' sake.
Byte counters include the open flows' bytes so far, and move the ended ones' into the
tracker's totals, so they only grow between restarts.
"""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterable, Sequence

from ..runtime import Runtime
from ..udp.service import UdpService
from .groups import health_of

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "trio_tproxy_"

Sample = tuple[dict[str, str], float]
_Family = Callable[[str, str, str, Iterable[Sample]], None]  # (name, type, help, samples)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> list[str]:
    lines = [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        shown = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        number = str(int(value)) if float(value).is_integer() else repr(float(value))
        lines.append(f"{name}{{{shown}}} {number}" if shown else f"{name} {number}")
    return lines


# What one process counts, by family name: the type, the help text and whether the
# family is prefixed. A multi-process gateway adds the processes' samples up (merge).
FAMILIES: dict[str, tuple[str, str]] = {
    "bytes_total": ("counter", "Bytes carried, by outbound and direction."),
    "flows_total": ("counter", "Ended flows by outbound, inbound, network, outcome."),
    "active_flows": ("gauge", "Open flows, by network."),
    "sniffed_total": ("counter", "Ended flows by sniffed protocol (none: not recognised)."),
    "errors_total": ("counter", "Flows that ended in an error, by kind."),
    "dns_queries_total": ("counter", "Queries sent to DNS servers, by server."),
    "dns_cache_total": ("counter", "DNS cache lookups, by result."),
    "udp_sessions": ("gauge", "Open UDP sessions, by inbound."),
    "udp_sessions_total": ("counter", "UDP sessions opened, by inbound."),
}
# The process collector's standard names (unprefixed, as prometheus_client's); with
# several processes, memory and descriptors are the sums, the limit the largest.
PROCESS_FAMILIES: dict[str, tuple[str, str]] = {
    "process_resident_memory_bytes": ("gauge", "Resident memory size in bytes."),
    "process_open_fds": ("gauge", "Open file descriptors."),
    "process_max_fds": ("gauge", "The file descriptor limit."),
}
Samples = dict[str, list[Sample]]  # family name -> samples; JSON-able (a worker sends them)


def samples(rt: Runtime, udp_services: Sequence[UdpService]) -> Samples:
    """What this process counts: its flows, DNS and UDP sessions, and the process."""
    tracker = rt.tracker
    active: dict[str, int] = {"tcp": 0, "udp": 0}
    for flow in tracker:
        active[flow.network] = active.get(flow.network, 0) + 1
    stats = rt.dns.stats
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = 0
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "bytes_total": [({"outbound": ob, "direction": d}, n)
                        for (ob, d), n in sorted(tracker.bytes_by_outbound().items())],
        "flows_total": [({"outbound": ob, "inbound": ib, "network": net, "outcome": oc}, n)
                        for (ob, ib, net, oc), n in sorted(tracker.ended_flows.items())],
        "active_flows": [({"network": net}, n) for net, n in sorted(active.items())],
        "sniffed_total": [({"protocol": p}, n) for p, n in sorted(tracker.sniffed.items())],
        "errors_total": [({"kind": k}, n) for k, n in sorted(tracker.errors.items())],
        "dns_queries_total": [({"server": s}, n) for s, n in sorted(stats.queries.items())],
        "dns_cache_total": [({"result": "hit"}, stats.cache_hits),
                            ({"result": "miss"}, stats.cache_misses)],
        "udp_sessions": [({"inbound": u.inbound.tag}, len(u.sessions)) for u in udp_services],
        "udp_sessions_total": [({"inbound": u.inbound.tag}, u.counters.sessions)
                               for u in udp_services],
        "process_resident_memory_bytes": [({}, rss_bytes())],
        "process_open_fds": [({}, fds)],
        "process_max_fds": [({}, soft)],
    }  # fmt: skip


def merge(parts: Iterable[Samples]) -> Samples:
    """Several processes' samples as one: same labels add up (the fd limit: the largest)."""
    merged: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for part in parts:
        for name, family in part.items():
            into = merged.setdefault(name, {})
            for labels, value in family:
                key = tuple(sorted(labels.items()))
                if name == "process_max_fds":
                    into[key] = max(into.get(key, 0), value)
                else:
                    into[key] = into.get(key, 0) + value
    return {name: [(dict(key), value) for key, value in sorted(family.items())]
            for name, family in merged.items()}  # fmt: skip


def render(rt: Runtime, counted: Samples) -> bytes:
    """The exposition: ``counted`` (this process's samples, or every process's merged)
    and the group health from the runtime."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        out.extend(_family(PREFIX + name, kind, help_text, samples))

    for name, (kind, help_text) in FAMILIES.items():
        family(name, kind, help_text, counted.get(name, ()))
    _health(rt, family)
    for name, (kind, help_text) in PROCESS_FAMILIES.items():
        out.extend(_family(name, kind, help_text, counted.get(name, ())))
    return ("\n".join(out) + "\n").encode()


def _health(rt: Runtime, family: _Family) -> None:
    book = health_of(rt)
    if book is None:
        return
    tags = [ob.tag for ob in rt.config.outbounds]
    family("outbound_up", "gauge", "1 when the outbound's last probe succeeded (or none ran).",
           (({"outbound": t}, 1 if book.alive(t) else 0) for t in tags))  # fmt: skip
    delays = [(t, book.last_delay(t)) for t in tags]
    family("outbound_delay_milliseconds", "gauge", "The last probe's delay (0: failed).",
           (({"outbound": t}, d) for t, d in delays if d is not None))  # fmt: skip


def rss_bytes() -> int:
    """The process's resident memory (/memory's ``inuse``)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
