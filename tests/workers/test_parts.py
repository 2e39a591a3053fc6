"""The pure parts of worker processes: the link's framing, adding up metrics, passing
group state on, the worker count."""

from __future__ import annotations

import os

import pytest
import trio
import trio.testing

from trio_tproxy.api import metrics
from trio_tproxy.outbound.health import HealthBook
from trio_tproxy.outbound.selections import SelectionStore
from trio_tproxy.workers import link as link_module
from trio_tproxy.workers.link import Link, LinkError
from trio_tproxy.workers.supervisor import worker_count


async def test_messages_cross_in_pieces_and_in_bursts() -> None:
    left, right = trio.testing.memory_stream_pair()
    a, b = Link(left), Link(right)
    await a.send({"op": "hello", "name": "w1", "text": "line\nbreak é"})
    await a.send({"id": 7, "result": [1, 2]})
    assert await b.receive() == {"op": "hello", "name": "w1", "text": "line\nbreak é"}
    assert await b.receive() == {"id": 7, "result": [1, 2]}
    # a message split over many small writes
    for byte in b'{"op":"x","n":1}\n':
        await left.send_all(bytes([byte]))
    assert await b.receive() == {"op": "x", "n": 1}
    await left.aclose()
    assert await b.receive() is None


@pytest.mark.parametrize("line", [b"not json\n", b"[1,2]\n", b"\xff\xfe\n"])
async def test_what_is_not_a_message_ends_the_link(line: bytes) -> None:
    left, right = trio.testing.memory_stream_pair()
    await left.send_all(line)
    with pytest.raises(LinkError):
        await Link(right).receive()


async def test_an_endless_line_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(link_module, "MAX_LINE", 1000)
    left, right = trio.testing.memory_stream_pair()
    receiver = Link(right)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(left.send_all, b"x" * 5000)
        with pytest.raises(LinkError, match="over 1000 bytes"):
            await receiver.receive()


def test_metrics_of_processes_add_up() -> None:
    one: metrics.Samples = {
        "bytes_total": [({"outbound": "direct", "direction": "up"}, 10)],
        "active_flows": [({"network": "tcp"}, 2), ({"network": "udp"}, 0)],
        "process_max_fds": [({}, 1024)],
    }
    # as a worker sends them: JSON lists, labels in another order
    two = {
        "bytes_total": [[{"direction": "up", "outbound": "direct"}, 5],
                        [{"outbound": "proxy", "direction": "up"}, 1]],
        "active_flows": [[{"network": "tcp"}, 3]],
        "process_max_fds": [[{}, 4096]],
    }
    merged = metrics.merge([one, two])  # type: ignore[list-item]
    assert sorted(merged["bytes_total"], key=lambda s: s[0]["outbound"]) == [
        ({"direction": "up", "outbound": "direct"}, 15),
        ({"direction": "up", "outbound": "proxy"}, 1),
    ]
    assert sorted(merged["active_flows"], key=lambda s: s[0]["network"]) == [
        ({"network": "tcp"}, 5), ({"network": "udp"}, 0)]
    assert merged["process_max_fds"] == [({}, 4096)]  # the limit is per process: the largest


def test_group_state_crosses_as_plain_data() -> None:
    hub = HealthBook()
    hub.record("a", 120, when=1000.0)
    hub.record("b", 0, when=1001.0)
    changes: list[str] = []
    hub.on_change = lambda: changes.append("x")
    hub.record("a", 80, when=1002.0)
    assert changes == ["x"]
    worker = HealthBook()
    worker.replace(hub.export())
    assert worker.last_delay("a") == 80 and worker.history("a")[0].delay == 120
    assert not worker.alive("b")
    store = SelectionStore(None)
    seen: list[str] = []
    store.on_change = lambda: seen.append("set")
    store.set("sel", "b")
    assert seen == ["set"]
    copy = SelectionStore(None)
    copy.adopt(store.choices)
    assert copy.get("sel") == "b"


def test_worker_count() -> None:
    assert worker_count(3) == 3
    assert worker_count("auto") == len(os.sched_getaffinity(0))
