"""/logs' fan-out: levels, a slow subscriber losing lines (not blocking), other threads."""

from __future__ import annotations

import logging

import trio

from trio_tproxy.api.loghub import SUBSCRIBER_BACKLOG, LogHub

log = logging.getLogger("trio_tproxy.test_loghub")


async def test_levels_backlog_and_threads() -> None:
    hub = LogHub()
    root = logging.getLogger("trio_tproxy")
    before = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(hub)
    try:
        everything = hub.subscribe(logging.DEBUG)
        warnings = hub.subscribe(logging.WARNING)
        log.debug("d %d", 1)
        log.info("i")
        log.warning("w")
        log.error("e")
        assert [everything.receive_nowait() for _ in range(4)] == [
            ("debug", "d 1"), ("info", "i"), ("warning", "w"), ("error", "e"),
        ]  # fmt: skip
        assert [warnings.receive_nowait() for _ in range(2)] == [("warning", "w"), ("error", "e")]
        for i in range(SUBSCRIBER_BACKLOG + 50):  # nobody reads: lines are dropped, no block
            log.info("line %d", i)
        assert everything.statistics().current_buffer_used == SUBSCRIBER_BACKLOG
        while True:
            try:
                everything.receive_nowait()
            except trio.WouldBlock:
                break
        await trio.to_thread.run_sync(log.warning, "from a thread")
        with trio.fail_after(2):
            assert await everything.receive() == ("warning", "from a thread")
        hub.unsubscribe(warnings)
        log.error("after")  # a closed subscriber is forgotten
        assert len(hub._subscribers) == 1
    finally:
        root.removeHandler(hub)
        root.setLevel(before)
