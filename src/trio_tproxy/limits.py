"""The open-file limit: raised as far as allowed, reported plainly when it will bind.

Every TCP flow holds two descriptors (client and upstream). Routers that hit "too many
open files" (v2ray-core#406, #1574) usually had a loop or a low limit nobody noticed;
we say at start what the limit allows.

UDP: The UDP session table's limits, and its counters. Pure.

The defaults are ``PolicyConfig``'s alone (config/schema.py): ``udp_idle`` is Xray's cone
timeout (v2ray's 8 s is the "sessions dying after seconds" complaint of
v2ray-core#1432); beyond ``max_udp_sessions`` / ``max_reply_sockets`` the least recently
active goes first.
"""

from __future__ import annotations

import logging
import resource
from typing import Final

import attrs

from .config.schema import PolicyConfig

log = logging.getLogger("trio_tproxy.limits")

FDS_PER_FLOW = 2
FD_RESERVE = 64  # listeners, DNS sockets, log files, the event loop's own
FDS_PER_PIPE = 2
MAX_PIPES = 1024  # bulk flows at once with zero-copy; beyond that, userspace copying


def raise_nofile_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open file limit from %d to %d: %s", soft, hard, exc)
    return soft


def check_connection_budget(max_connections: int, nofile: int) -> None:
    need = max_connections * FDS_PER_FLOW + FD_RESERVE
    if need > nofile:
        log.warning(
            "policy.max_connections = %d needs about %d open files, but the limit is %d: "
            "about %d flows fit; beyond that new connections wait in the kernel queue",
            max_connections, need, nofile, max(0, (nofile - FD_RESERVE) // FDS_PER_FLOW),
        )  # fmt: skip


def pipe_budget(max_connections: int) -> int:
    """How many splice pipes fit beside ``max_connections`` flows in the open-file limit.

    Uses the hard limit: ``run`` raises the soft limit to it before serving.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return MAX_PIPES
    spare = hard - FD_RESERVE - max_connections * FDS_PER_FLOW
    return max(0, min(MAX_PIPES, spare // FDS_PER_PIPE))


# While the gateway stops, a session silent this long ends at once instead of after
# ``idle``: UDP has no close, so silence is the only sign a flow is done (like v2ray's
# 1 s uplink-only/downlink-only timers once a TCP side finished).
DRAIN_IDLE: Final = 1.0
# One client source talking to many remotes (a BitTorrent DHT node, a game's
# matchmaking) keeps one routing decision and counter set per remote; beyond this the
# least recently active is forgotten (and logged); its next datagram is routed afresh.
MAX_FLOWS_PER_SESSION: Final = 1024


@attrs.frozen
class UdpLimits:
    """The table's limits, from the policy section (whose defaults are the only ones)."""

    idle: float
    max_sessions: int
    max_reply_sockets: int

    @classmethod
    def from_policy(cls, policy: PolicyConfig) -> UdpLimits:
        return cls(
            idle=policy.udp_idle.seconds,
            max_sessions=policy.max_udp_sessions,
            max_reply_sockets=policy.max_reply_sockets,
        )


@attrs.define
class UdpCounters:
    """Running totals for one UDP inbound, logged when it stops."""

    sessions: int = 0  # created
    expired: int = 0  # ended by the idle timer
    evicted: int = 0  # ended because the table was full
    flows: int = 0  # (client source, remote) pairs routed or seen
    datagrams_up: int = 0
    bytes_up: int = 0
    datagrams_down: int = 0
    bytes_down: int = 0
    empty: int = 0  # zero-length datagrams (relayed like any other)
    dropped: int = 0  # not relayed: queue full, send error, refused, blocked, truncated
    refused_loop: int = 0  # addressed to the gateway itself
    own_replies: int = 0  # replies to our upstream links that the ruleset diverted here
    reply_sockets: int = 0  # transparent reply sockets opened
    reply_evicted: int = 0
    reply_raw: int = 0  # replies sent through the raw fallback

    def summary(self) -> str:
        return (
            f"{self.sessions} sessions ({self.expired} expired, {self.evicted} evicted), "
            f"{self.flows} flows; up {self.datagrams_up} datagrams/{self.bytes_up} bytes, "
            f"down {self.datagrams_down}/{self.bytes_down}; {self.empty} empty, "
            f"{self.dropped} dropped, {self.refused_loop} refused (loop), "
            f"{self.own_replies} diverted replies to our links delivered; reply sockets "
            f"{self.reply_sockets} opened, {self.reply_evicted} evicted, "
            f"{self.reply_raw} raw replies"
        )


def check_fd_budget(tag: str, limits: UdpLimits) -> None:
    """Say at start when the table's limits cannot be reached within RLIMIT_NOFILE.

    Each session holds one upstream socket per outbound it uses (direct: one), each
    reply socket one; beyond the limit, new sessions fail to open their link (logged
    per flow) instead of evicting old ones.
    """
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    need = limits.max_sessions + limits.max_reply_sockets
    if need > nofile // 2:
        log.warning(
            "udp %s: max_udp_sessions + max_reply_sockets = %d descriptors, more than half "
            "the open file limit (%d) that TCP flows share", tag, need, nofile,
        )  # fmt: skip
