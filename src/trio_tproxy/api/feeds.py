"""The four streams: /traffic, /memory, /logs and /connections (WebSocket or NDJSON).

Each is a :class:`Feed` whose producer sends one JSON document per tick (or per log
line) until the client goes away; the HTTP layer picks the transport.
"""

from __future__ import annotations

import json

import trio

from .flows import FlowsView
from .http import Feed, Send
from .loghub import LogHub

TICK = 1.0  # mihomo's /traffic and /memory period


def _dump(body: object) -> str:
    return json.dumps(body, separators=(",", ":"))


def traffic_feed(flows: FlowsView) -> Feed:
    """Bytes per second in each direction, every second (mihomo's {"up","down"})."""

    async def produce(send: Send) -> None:
        last_up, last_down = await flows.totals()
        while True:
            await trio.sleep(TICK)
            up, down = await flows.totals()
            await send(_dump({"up": max(0, up - last_up), "down": max(0, down - last_down),
                              "upTotal": up, "downTotal": down}))  # fmt: skip
            last_up, last_down = up, down

    return Feed(produce)


def memory_feed(flows: FlowsView) -> Feed:
    """Resident memory of the gateway (every process of it), every second."""

    async def produce(send: Send) -> None:
        while True:
            await send(_dump({"inuse": await flows.memory(), "oslimit": 0}))
            await trio.sleep(TICK)

    return Feed(produce)


def logs_feed(hub: LogHub, level: float) -> Feed:
    async def produce(send: Send) -> None:
        lines = hub.subscribe(level)
        try:
            async for kind, payload in lines:
                await send(_dump({"type": kind, "payload": payload}))
        finally:
            hub.unsubscribe(lines)

    return Feed(produce)


def connections_feed(flows: FlowsView, interval: float) -> Feed:
    async def produce(send: Send) -> None:
        while True:
            await send(_dump(await flows.connections()))
            await trio.sleep(interval)

    return Feed(produce)
