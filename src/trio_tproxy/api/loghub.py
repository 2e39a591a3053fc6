"""The process's log lines, fanned out to /logs subscribers (mihomo's {"type","payload"}).

A handler on the ``trio_tproxy`` logger, installed while the API runs, so the access log
(info), warnings and errors all reach dashboards. Delivery never blocks logging: each
subscriber has a bounded queue and a slow one loses lines, not the gateway its time.
Records logged from another thread (a reload compiled off the loop) are handed to the
trio thread first.
"""

from __future__ import annotations

import contextlib
import logging
import math

import trio

# Lines a subscriber may fall behind before new ones are dropped for it.
SUBSCRIBER_BACKLOG = 256

# mihomo's level names, lowest first; "silent" shows nothing.
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "silent": math.inf}  # fmt: skip


def mihomo_level(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    return "info" if levelno >= logging.INFO else "debug"


class LogHub(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self._token = trio.lowlevel.current_trio_token()
        self._subscribers: set[tuple[float, trio.MemorySendChannel[tuple[str, str]]]] = set()

    def subscribe(self, level: float) -> trio.MemoryReceiveChannel[tuple[str, str]]:
        send, receive = trio.open_memory_channel[tuple[str, str]](SUBSCRIBER_BACKLOG)
        self._subscribers.add((level, send))
        return receive

    def unsubscribe(self, receive: trio.MemoryReceiveChannel[tuple[str, str]]) -> None:
        receive.close()

    def lowest_level(self) -> float | None:
        """The lowest level a subscriber asked for; None without subscribers (closed
        ones are only noticed at the next line, so this may lag by one line)."""
        levels = [level for level, send in self._subscribers]
        return min(levels) if levels else None

    def publish(self, levelno: int, line: tuple[str, str]) -> None:
        """A line logged elsewhere (a worker process), delivered as our own."""
        self._deliver(levelno, line)

    def emit(self, record: logging.LogRecord) -> None:
        if not self._subscribers:
            return
        try:
            line = (mihomo_level(record.levelno), record.getMessage())
        except Exception:  # a bad %-format in someone's log call: not our lines to lose
            return
        try:
            trio.lowlevel.current_task()
        except RuntimeError:  # another thread: deliver on the trio thread
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(self._deliver, record.levelno, line)
            return
        self._deliver(record.levelno, line)

    def _deliver(self, levelno: int, line: tuple[str, str]) -> None:
        gone = []
        for level, send in self._subscribers:
            if levelno < level:
                continue
            try:
                send.send_nowait(line)
            except trio.WouldBlock:
                pass  # this subscriber is behind: it loses the line
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                gone.append((level, send))
        self._subscribers.difference_update(gone)
