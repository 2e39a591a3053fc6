"""The flow tracker: totals only grow, ended flows move into counters, close reaches flows."""

from __future__ import annotations

import ipaddress

import attrs
import pytest

from trio_tproxy.access import FlowRecord
from trio_tproxy.route import Decision
from trio_tproxy.tracking import FlowTracker, TrackedFlow, error_kind, outcome_class


@attrs.define
class Counts:
    up: int = 0
    down: int = 0
    chain: tuple[str, ...] = ()


def flow(counts: Counts, closed: list[str], outbound: str = "direct") -> TrackedFlow:
    record = FlowRecord((ipaddress.ip_address("10.0.0.2"), 1000),
                        (ipaddress.ip_address("10.0.1.2"), 80), "in", started=0.0, protocol="http",
                        decision=Decision(outbound, None))  # fmt: skip
    tracked: TrackedFlow

    def close() -> None:
        closed.append(tracked.id)

    tracked = TrackedFlow("tcp", "tproxy", record, counts, close)
    return tracked


def test_totals_grow_across_the_end_of_a_flow() -> None:
    tracker = FlowTracker()
    closed: list[str] = []
    a, b = Counts(10, 100), Counts(1, 2, ("ss-hk", "auto"))
    fa, fb = tracker.add(flow(a, closed)), tracker.add(flow(b, closed, "auto"))
    assert tracker.totals() == (11, 102)
    a.down += 50
    tracker.remove(fa, "done")
    tracker.remove(fa, "done")  # twice: counted once
    assert tracker.totals() == (11, 152)
    assert tracker.bytes_by_outbound()[("ss-hk", "down")] == 2  # the chain's outbound
    assert tracker.ended_flows[("direct", "in", "tcp", "ok")] == 1
    assert tracker.sniffed["http"] == 1
    assert tracker.close(fb.id) and closed == [fb.id]
    assert not tracker.close(fa.id)
    assert tracker.close_all() == 1 and closed == [fb.id, fb.id]


def test_chain_falls_back_to_the_decision() -> None:
    tracked = flow(Counts(), [])
    assert tracked.chain == ("direct",)
    assert flow(Counts(chain=("a", "g")), []).chain == ("a", "g")


@pytest.mark.parametrize(("outcome", "cls", "kind"), [
    ("done", "ok", None),
    ("idle timeout", "ok", None),
    ("closed by API", "closed", None),
    ("cancelled", "cancelled", None),
    ("refused: destination is one of our own listeners (loop)", "refused", None),
    ("uplink error: Connection reset by peer", "error", "uplink_error"),
    ("dial 10.0.1.2:80: connection refused", "error", "dial"),
    ("dial 10.0.1.2:80: timed out", "timeout", "timeout"),
    ("internal error", "error", "internal"),
])  # fmt: skip
def test_outcome_labels_are_bounded(outcome: str, cls: str, kind: str | None) -> None:
    assert outcome_class(outcome) == cls
    if kind is not None:
        assert error_kind(outcome) == kind


def test_a_reload_keeps_the_tracker() -> None:
    from trio_tproxy.config import parse_config_text
    from trio_tproxy.runtime import Runtime

    cfg = parse_config_text(
        '[[inbounds]]\ntag = "in"\ntype = "tproxy"\nport = 12345\n'
        '[[outbounds]]\ntag = "direct"\ntype = "direct"\n'
    )
    first = Runtime.build(cfg)
    assert Runtime.build(cfg, tracker=first.tracker).tracker is first.tracker
    assert Runtime.build(cfg).tracker is not first.tracker
