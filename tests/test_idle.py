"""The shared idle clock: exact expiry, touches, shortening, ending, and a bounded heap."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from trio_tproxy.idle import COMPACT_SLACK, Activity, IdleClock


async def test_expires_after_timeout_of_inactivity(autojump_clock: trio.testing.MockClock) -> None:
    fired: list[float] = []
    start = trio.current_time()
    activity = Activity(10, lambda: fired.append(trio.current_time() - start))
    await trio.sleep(30)
    assert fired == [pytest.approx(10)]
    assert activity.ended


async def test_touch_postpones_to_the_exact_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    fired: list[float] = []
    start = trio.current_time()
    activity = Activity(10, lambda: fired.append(trio.current_time() - start))
    for _ in range(3):
        await trio.sleep(7)
        activity.touch()
    await trio.sleep(30)
    assert fired == [pytest.approx(31)]  # last touch at 21, plus 10


async def test_shorten_wakes_the_clock_earlier(autojump_clock: trio.testing.MockClock) -> None:
    fired: list[float] = []
    start = trio.current_time()
    activity = Activity(300, lambda: fired.append(trio.current_time() - start))
    await trio.sleep(1)
    activity.shorten(2)
    await trio.sleep(10)
    assert fired == [pytest.approx(3)]


async def test_ended_never_fires_and_lets_go(autojump_clock: trio.testing.MockClock) -> None:
    fired: list[int] = []
    activity = Activity(5, lambda: fired.append(1))
    activity.end()
    activity.end()  # idempotent
    assert activity.on_expire is None
    await trio.sleep(10)
    assert fired == []


async def test_callback_error_does_not_stop_the_clock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def broken() -> None:
        raise RuntimeError("bug")

    fired: list[int] = []
    Activity(1, broken)
    Activity(2, lambda: fired.append(1))
    await trio.sleep(5)
    assert fired == [1]


async def test_short_flows_do_not_grow_the_heap(autojump_clock: trio.testing.MockClock) -> None:
    keep = Activity(300, lambda: None)
    for _ in range(5 * COMPACT_SLACK):
        Activity(300, lambda: None).end()
    heap = IdleClock.current()._heap
    assert len(heap) <= 2 * 1 + COMPACT_SLACK + 1
    keep.end()


def test_without_a_callback_no_clock_is_needed() -> None:
    # the pumps' copiers only touch; a bare Activity (as tests build) needs no run
    async def main() -> None:
        Activity(1).touch()

    trio.run(main)
