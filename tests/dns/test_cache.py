"""dns/cache.py and dns/reverse.py: TTLs and bounds, sharing of queries in flight."""

from __future__ import annotations

import ipaddress

import pytest
import trio
import trio.testing

from trio_tproxy.dns.cache import NEGATIVE_TTL_MAX, Inflight, TtlCache
from trio_tproxy.dns.reverse import ReverseMap


def test_entries_live_for_their_ttl() -> None:
    cache: TtlCache[str, int] = TtlCache(10)
    assert cache.put("a", 1, 30, now=100.0) == 30
    assert cache.get("a", 100.0) == (1, 30)
    assert cache.get("a", 129.5) == (1, 0.5)
    assert cache.get("a", 130.0) is None
    assert len(cache) == 0  # the expired entry is gone, not just hidden


@pytest.mark.parametrize(
    ("ttl", "negative", "stored"),
    [
        (0, False, 5.0),  # raised to min_ttl
        (3, False, 5.0),
        (60, False, 60.0),
        (10**6, False, 3600.0),  # lowered to max_ttl
        (10**6, True, float(NEGATIVE_TTL_MAX)),  # negative answers: capped harder
        (20, True, 20.0),
    ],
)
def test_ttl_bounds(ttl: int, negative: bool, stored: float) -> None:
    cache: TtlCache[str, int] = TtlCache(10, min_ttl=5, max_ttl=3600)
    assert cache.put("k", 1, ttl, now=0.0, negative=negative) == stored
    assert cache.get("k", stored - 0.01) is not None
    assert cache.get("k", stored) is None


def test_zero_ttl_is_not_cached_without_min_ttl() -> None:
    cache: TtlCache[str, int] = TtlCache(10)
    assert cache.put("k", 1, 0, now=0.0) == 0
    assert cache.get("k", 0.0) is None


def test_size_bound_evicts_least_recently_used() -> None:
    cache: TtlCache[int, int] = TtlCache(3)
    for key in range(3):
        cache.put(key, key, 60, now=0.0)
    assert cache.get(0, 1.0) is not None  # 0 is now the most recent
    cache.put(3, 3, 60, now=1.0)
    assert len(cache) == 3
    assert cache.get(1, 1.0) is None  # the least recently used went
    assert [cache.get(k, 1.0) is not None for k in (0, 2, 3)] == [True, True, True]


def test_size_zero_disables_caching() -> None:
    cache: TtlCache[str, int] = TtlCache(0)
    assert cache.put("k", 1, 60, now=0.0) == 0
    assert cache.get("k", 0.0) is None


async def test_concurrent_identical_lookups_share_one_fetch() -> None:
    inflight: Inflight[str, int] = Inflight()
    calls = 0
    release = trio.Event()

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return 42

    results: list[int] = []

    async def ask() -> None:
        results.append(await inflight.run("k", fetch))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(ask)
        await trio.testing.wait_all_tasks_blocked()
        assert len(inflight) == 1
        release.set()
    assert (calls, results, inflight.shared, len(inflight)) == (1, [42] * 5, 4, 0)


async def test_a_cancelled_first_caller_does_not_fail_the_others() -> None:
    inflight: Inflight[str, int] = Inflight()
    calls = 0
    release = trio.Event()

    async def fetch() -> int:
        nonlocal calls
        calls += 1
        await release.wait()
        return calls

    got: list[int] = []
    first = trio.CancelScope()

    async def first_caller() -> None:
        with first:
            await inflight.run("k", fetch)

    async def second_caller() -> None:
        got.append(await inflight.run("k", fetch))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first_caller)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(second_caller)
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    assert got == [2]  # the waiter fetched for itself
    assert len(inflight) == 0


async def test_a_failing_fetch_raises_for_its_caller_only() -> None:
    inflight: Inflight[str, int] = Inflight()

    async def broken() -> int:
        await trio.lowlevel.checkpoint()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        await inflight.run("k", broken)
    assert len(inflight) == 0


def test_reverse_map_is_bounded_and_newest_wins() -> None:
    reverse = ReverseMap(size=3)
    a, b, c, d = (ipaddress.ip_address(f"10.0.0.{i}") for i in range(1, 5))
    reverse.learn("one.example", [a, b])
    reverse.learn("two.example", [c, b])  # b now belongs to the newer answer
    assert reverse.lookup(b) == "two.example"
    reverse.learn("three.example", [d])
    assert len(reverse) == 3
    assert reverse.lookup(a) is None  # the oldest went first
    assert reverse.lookup(d) == "three.example"
    mapped = ipaddress.ip_address("::ffff:10.0.0.4")
    assert reverse.lookup(mapped) == "three.example"  # what a dual-stack socket reports


def test_carry_over_keeps_live_accepted_entries_in_recency_order() -> None:
    old: TtlCache[str, int] = TtlCache(10)
    for i, key in enumerate("abcde"):
        old.put(key, i, 30 if key == "a" else 10 + i, now=0.0)
    old.get("a", now=1.0)  # recency now: b c d e a
    new: TtlCache[str, int] = TtlCache(2)
    # at 11.5 "b" has expired and "d" is refused: c, e, a are taken, the two most recent stay
    assert new.carry_over(old, lambda key, value: key != "d", now=11.5) == 2
    assert new.get("c", now=11.5) is None and new.get("b", now=11.5) is None
    assert new.get("e", now=11.5) == (4, 14.0 - 11.5)  # its expiry kept, not renewed
    assert new.get("a", now=11.5) == (0, 30.0 - 11.5)


def test_carry_over_into_a_disabled_cache_takes_nothing() -> None:
    old: TtlCache[str, int] = TtlCache(10)
    old.put("a", 1, 60, now=0.0)
    assert TtlCache[str, int](0).carry_over(old, lambda key, value: True, now=1.0) == 0
