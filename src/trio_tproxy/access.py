"""Access records: what a TCP connection or a UDP flow was and how it ended, one log line.

Shared by session.py (TCP) and udp/ (datagram flows), below both.
"""

from __future__ import annotations

import logging

import attrs
import trio

from .addr import SockAddr
from .addr import show as show_addr
from .route import Decision

access_log = logging.getLogger("trio_tproxy.access")


@attrs.define
class FlowRecord:
    """What the access log says about a flow when it ends."""

    src: SockAddr
    dst: SockAddr
    inbound: str
    started: float = attrs.field(factory=trio.current_time)
    domain: str | None = None
    protocol: str | None = None
    decision: Decision | None = None
    chain: tuple[str, ...] = ()  # the outbound that carried it, then its groups


def log_access(
    record: FlowRecord, network: str, up: int, down: int, outcome: str, *, detail: str = ""
) -> None:
    """The access-log line of a TCP connection or a UDP flow (``detail``: datagrams)."""
    d = record.decision
    routed = "-"
    if d is not None:
        via = d.outbound
        if len(record.chain) > 1:  # a group: name the member that carried it, auto[ss-hk]
            via = f"{d.outbound}[{record.chain[0]}]"
        routed = f"{via} ({'default' if d.rule_index is None else f'rule #{d.rule_index}'})"
    access_log.info(
        "%s -> %s%s %s %s -> %s up=%d down=%d%s %.3fs %s",
        show_addr(record.src), show_addr(record.dst),
        f" [{record.domain}]" if record.domain else "",
        f"{network}/{record.protocol}" if record.protocol else network,
        record.inbound, routed, up, down, detail,
        trio.current_time() - record.started, outcome,
    )  # fmt: skip
