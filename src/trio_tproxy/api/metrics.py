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


def render(rt: Runtime, udp_services: Sequence[UdpService]) -> bytes:
    tracker = rt.tracker
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
        out.extend(_family(PREFIX + name, kind, help_text, samples))

    family("bytes_total", "counter", "Bytes carried, by outbound and direction.", (
        ({"outbound": ob, "direction": d}, n)
        for (ob, d), n in sorted(tracker.bytes_by_outbound().items())
    ))  # fmt: skip
    family("flows_total", "counter", "Ended flows by outbound, inbound, network, outcome.", (
        ({"outbound": ob, "inbound": ib, "network": net, "outcome": oc}, n)
        for (ob, ib, net, oc), n in sorted(tracker.ended_flows.items())
    ))  # fmt: skip
    active: dict[str, int] = {"tcp": 0, "udp": 0}
    for flow in tracker:
        active[flow.network] = active.get(flow.network, 0) + 1
    family("active_flows", "gauge", "Open flows, by network.",
           (({"network": net}, n) for net, n in sorted(active.items())))  # fmt: skip
    family("sniffed_total", "counter", "Ended flows by sniffed protocol (none: not recognised).",
           (({"protocol": p}, n) for p, n in sorted(tracker.sniffed.items())))  # fmt: skip
    family("errors_total", "counter", "Flows that ended in an error, by kind.",
           (({"kind": k}, n) for k, n in sorted(tracker.errors.items())))  # fmt: skip
    _dns(rt, family)
    family("udp_sessions", "gauge", "Open UDP sessions, by inbound.",
           (({"inbound": u.inbound.tag}, len(u.sessions)) for u in udp_services))  # fmt: skip
    family("udp_sessions_total", "counter", "UDP sessions opened, by inbound.",
           (({"inbound": u.inbound.tag}, u.counters.sessions) for u in udp_services))  # fmt: skip
    _health(rt, family)
    out.extend(_process())
    return ("\n".join(out) + "\n").encode()


def _dns(rt: Runtime, family: _Family) -> None:
    stats = rt.dns.stats
    family("dns_queries_total", "counter", "Queries sent to DNS servers, by server.",
           (({"server": s}, n) for s, n in sorted(stats.queries.items())))  # fmt: skip
    family("dns_cache_total", "counter", "DNS cache lookups, by result.", [
        ({"result": "hit"}, stats.cache_hits), ({"result": "miss"}, stats.cache_misses),
    ])  # fmt: skip


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


def _process() -> list[str]:
    """The process collector's standard names (unprefixed, as prometheus_client's)."""
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = 0
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return [
        *_family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
                 [({}, rss_bytes())]),
        *_family("process_open_fds", "gauge", "Open file descriptors.", [({}, fds)]),
        *_family("process_max_fds", "gauge", "The file descriptor limit.", [({}, soft)]),
    ]  # fmt: skip


def rss_bytes() -> int:
    """The process's resident memory (/memory's ``inuse``)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0
