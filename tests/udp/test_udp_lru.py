"""udp/lru.py: least-recently-active order, eviction, idle expiry (pure)."""

from __future__ import annotations

import attrs

from trio_tproxy.udp.lru import IdleLru


@attrs.define
class Entry:
    name: str
    last: float = 0.0


def test_order_follows_activity() -> None:
    table: IdleLru[str, Entry] = IdleLru()
    for i, name in enumerate("abc"):
        table.add(name, Entry(name), now=float(i))
    table.touch("a", table["a"], now=5.0)
    assert list(table) == ["b", "c", "a"]
    assert table.pop_oldest() == ("b", Entry("b", 1.0))
    assert table["a"].last == 5.0


def test_pop_idle_takes_only_the_expired_prefix() -> None:
    table: IdleLru[str, Entry] = IdleLru()
    table.add("a", Entry("a"), now=0.0)
    table.add("b", Entry("b"), now=3.0)
    table.add("c", Entry("c"), now=9.0)
    assert table.next_expiry(idle=10.0) == 10.0
    assert table.pop_idle(now=9.9, idle=10.0) == []
    assert [k for k, _ in table.pop_idle(now=13.0, idle=10.0)] == ["a", "b"]  # 13 >= 3 + 10
    assert list(table) == ["c"]
    assert table.next_expiry(idle=10.0) == 19.0


def test_empty_table() -> None:
    table: IdleLru[str, Entry] = IdleLru()
    assert table.pop_oldest() is None
    assert table.next_expiry(1.0) is None
    assert table.pop_idle(100.0, 1.0) == []


def test_re_adding_a_key_moves_it_to_the_end() -> None:
    table: IdleLru[str, Entry] = IdleLru()
    table.add("a", Entry("a"), now=0.0)
    table.add("b", Entry("b"), now=1.0)
    table.add("a", Entry("a2"), now=2.0)
    assert list(table) == ["b", "a"] and table["a"].name == "a2"
