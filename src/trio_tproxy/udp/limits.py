"""The UDP session table's limits, and its counters. Pure.

Defaults (config/schema.py ``PolicyConfig``): sessions idle for 120 s end (Xray's cone
timeout; v2ray's 8 s is the "sessions dying after seconds" complaint of
v2ray-core#1432), at most 4096 sessions and 1024 reply sockets, least recently active
first out.
"""

from __future__ import annotations

import logging
import resource
from typing import Final

import attrs

from ..config.schema import PolicyConfig

log = logging.getLogger("trio_tproxy.udp.limits")

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
    idle: float = 120.0
    max_sessions: int = 4096
    max_reply_sockets: int = 1024

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
    reply_sockets: int = 0  # transparent reply sockets opened
    reply_evicted: int = 0
    reply_raw: int = 0  # replies sent through the raw fallback

    def summary(self) -> str:
        return (
            f"{self.sessions} sessions ({self.expired} expired, {self.evicted} evicted), "
            f"{self.flows} flows; up {self.datagrams_up} datagrams/{self.bytes_up} bytes, "
            f"down {self.datagrams_down}/{self.bytes_down}; {self.empty} empty, "
            f"{self.dropped} dropped, {self.refused_loop} refused (loop); reply sockets "
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
