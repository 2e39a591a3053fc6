"""The pure choice of a group's member: tolerance, configured order, recovery, all down.

Probe results go through a real HealthBook with timestamps from a fake clock, so the
tests read as a timeline: what the probes saw at t, and what a new flow gets then.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from trio_tproxy.outbound import group_choice
from trio_tproxy.outbound.group_choice import GroupView, alive, choose, show_delays
from trio_tproxy.outbound.health import HISTORY, HealthBook

MEMBERS = ("hk", "us", "jp")


class Timeline:
    """A HealthBook fed at fake times, and the group's choice carried from step to step
    (the previous choice is what urltest's tolerance compares against)."""

    def __init__(self, kind: str, *, tolerance_ms: int = 0, selected: str | None = None) -> None:
        self.kind, self.tolerance_ms, self.selected = kind, tolerance_ms, selected
        self.book = HealthBook()
        self.now = 1_000_000.0
        self.previous: str | None = None

    def probes(self, **delays: int) -> str | None:
        """One probe round (0 = failed) ``interval`` after the last; the new choice."""
        self.now += 60.0
        for tag, delay in delays.items():
            self.book.record(tag, delay, when=self.now)
        return self.choice()

    def choice(self) -> str | None:
        view = GroupView(
            self.kind, MEMBERS, {m: self.book.last_delay(m) for m in MEMBERS},
            previous=self.previous, selected=self.selected, tolerance_ms=self.tolerance_ms,
        )  # fmt: skip
        member = choose(view)
        if member is not None:
            self.previous = member
        return member


def test_urltest_before_any_probe_uses_the_first_member() -> None:
    assert Timeline("urltest").choice() == "hk"


def test_urltest_picks_the_lowest_delay() -> None:
    t = Timeline("urltest", tolerance_ms=50)
    assert t.probes(hk=300, us=80, jp=120) == "us"


def test_urltest_keeps_its_choice_within_tolerance() -> None:
    t = Timeline("urltest", tolerance_ms=50)
    assert t.probes(hk=100, us=200, jp=300) == "hk"
    assert t.probes(hk=140, us=95, jp=300) == "hk"  # us is faster by 45 ms: not enough
    assert t.probes(hk=150, us=100, jp=300) == "hk"  # exactly the tolerance: still kept
    assert t.probes(hk=151, us=100, jp=300) == "us"  # faster by more than 50 ms: switch
    assert t.probes(hk=60, us=100, jp=300) == "us"  # and the same rule holds back again


def test_urltest_ties_go_by_configured_order() -> None:
    assert Timeline("urltest").probes(hk=90, us=90, jp=90) == "hk"
    assert Timeline("urltest").probes(hk=0, us=90, jp=90) == "us"


def test_urltest_leaves_a_failed_member_at_once_whatever_the_tolerance() -> None:
    t = Timeline("urltest", tolerance_ms=10_000)
    assert t.probes(hk=50, us=400, jp=0) == "hk"
    assert t.probes(hk=0, us=400, jp=0) == "us"
    # hk recovers, faster, but not by more than the tolerance: us stays
    assert t.probes(hk=50, us=400, jp=0) == "us"


def test_urltest_untested_members_wait_for_a_measurement() -> None:
    t = Timeline("urltest")
    assert t.probes(us=200) == "us"  # hk and jp untested: the measured one wins


def test_fallback_takes_the_first_healthy_in_order() -> None:
    t = Timeline("fallback")
    assert t.probes(hk=500, us=20, jp=10) == "hk"  # order, not speed
    assert t.probes(hk=0, us=20, jp=10) == "us"
    assert t.probes(hk=0, us=0, jp=10) == "jp"


def test_fallback_returns_to_a_recovered_better_member() -> None:
    t = Timeline("fallback")
    assert t.probes(hk=0, us=0, jp=10) == "jp"
    assert t.probes(hk=0, us=30, jp=10) == "us"
    assert t.probes(hk=40, us=30, jp=10) == "hk"


def test_selector_uses_the_chosen_member_default_first() -> None:
    assert Timeline("selector").choice() == "hk"
    assert Timeline("selector", selected="jp").choice() == "jp"
    # a stale choice (the member left the config) falls back to the first
    assert Timeline("selector", selected="gone").choice() == "hk"


def test_selector_keeps_a_chosen_member_whose_probe_failed() -> None:
    t = Timeline("selector", selected="us")
    assert t.probes(hk=10, us=0, jp=10) == "us"


@pytest.mark.parametrize("kind", ["selector", "urltest", "fallback"])
def test_all_down_is_none_and_recovery_follows(kind: str) -> None:
    t = Timeline(kind, selected="jp")
    assert t.probes(hk=0, us=0, jp=0) is None
    recovered = t.probes(hk=0, us=70, jp=0)
    assert recovered == ("jp" if kind == "selector" else "us")


def test_health_book_keeps_the_last_ten_oldest_first() -> None:
    book = HealthBook()
    assert book.last_delay("hk") is None and book.alive("hk") and book.history("hk") == []
    for i in range(HISTORY + 5):
        book.record("hk", i + 1, when=float(i))
    history = book.history("hk")
    assert len(history) == HISTORY
    assert [s.delay for s in history] == list(range(6, HISTORY + 6))
    assert [s.time for s in history] == [float(i) for i in range(5, HISTORY + 5)]
    book.record("hk", None, when=99.0)  # a failed probe is recorded as 0 (mihomo)
    assert book.last_delay("hk") == 0 and not book.alive("hk")
    assert alive(None) and alive(1) and not alive(0)


def test_show_delays() -> None:
    text = show_delays(MEMBERS, {"hk": 120, "us": 0})
    assert text == "hk 120ms, us failed, jp untested"


def test_the_choice_is_pure() -> None:
    tree = ast.parse(Path(group_choice.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}  # fmt: skip
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom) and n.level == 0}  # fmt: skip
    assert not imported & {"trio", "socket", "ssl", "asyncio", "selectors"}
