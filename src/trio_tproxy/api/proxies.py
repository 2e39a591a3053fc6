"""/proxies and /group: outbounds and groups as mihomo shows them, selection, URL tests.

Groups are reached through the groups/API contract (``groups.py``): a selector's
``select`` (which persists its choice), a group's ``probe_all``, the runtime's health
book for each outbound's history, and the application's ``probe_delay`` for one URL test.
"""

from __future__ import annotations

import logging

import trio

from ..config.schema import DEFAULT_PROBE_URL
from ..runtime import Runtime
from . import shapes
from .groups import DelayProber, as_group, health_of
from .http import Reply, Request, json_reply, message
from .requests import BAD_REQUEST, NO_CONTENT, NOT_FOUND, json_object, positive_int

log = logging.getLogger("trio_tproxy.api")


async def proxies(
    rt: Runtime, request: Request, seg: list[str], prober: DelayProber | None
) -> Reply:
    """/proxies, /proxies/{name}: GET and (selectors) PUT; /proxies/{name}/delay."""
    if not seg:
        if request.method != "GET":
            return message(405, "Method not allowed")
        return json_reply({"proxies": shapes.proxies(rt)})
    name = seg[0]
    known = name == "GLOBAL" or name in rt.outbounds
    if not known or len(seg) > 2 or (len(seg) == 2 and seg[1] != "delay"):
        return NOT_FOUND
    if len(seg) == 2:
        return await _delay(rt, request, name, prober) if request.method == "GET" else NOT_FOUND
    if request.method == "GET":
        shown = shapes.proxies(rt)[name] if name == "GLOBAL" else shapes.proxy(rt, name)
        return json_reply(shown)
    if request.method == "PUT":
        return _select(rt, request, name)
    return message(405, "Method not allowed")


def _select(rt: Runtime, request: Request, name: str) -> Reply:
    body = json_object(request.body)
    member = body.get("name") if body is not None else None
    if not isinstance(member, str):
        return BAD_REQUEST
    group = as_group(rt.outbounds.get(name))
    if group is None or group.kind != "selector":
        return message(400, "Must be a Selector")
    try:
        group.select(member)
    except ValueError as exc:
        return message(400, f"Selector update error: {exc}")
    log.info("selector %r now uses %r (controller API)", name, member)
    return NO_CONTENT


async def _delay(rt: Runtime, request: Request, name: str, prober: DelayProber | None) -> Reply:
    """mihomo's URL test: {"delay": ms}; 503 when the probe failed, 504 past ``timeout``."""
    timeout = positive_int(request.query.get("timeout", ""), 60_000)
    outbound = rt.outbounds.get(name)
    if timeout is None or outbound is None:
        return BAD_REQUEST if outbound is not None else NOT_FOUND
    if prober is None:
        return message(503, "delay tests are not available in this build")
    url = request.query.get("url") or str(getattr(outbound, "url", DEFAULT_PROBE_URL))
    book = health_of(rt)
    delay = 0
    try:
        with trio.fail_after(timeout / 1000):
            delay = await prober(outbound, url, timeout / 1000)
    except (trio.TooSlowError, TimeoutError):
        return message(504, "Timeout")
    except OSError as exc:
        return message(503, f"An error occurred in the delay test: {exc}")
    except ValueError as exc:  # a URL the prober cannot use
        return message(400, f"bad url: {exc}")
    finally:
        if book is not None:
            book.record(name, delay)
    return json_reply({"delay": delay})


async def groups(rt: Runtime, request: Request, seg: list[str]) -> Reply:
    """/group, /group/{name}, /group/{name}/delay (every member probed at once)."""
    if not seg:  # every group, as /proxies shows them
        tags = [tag for tag, ob in rt.outbounds.items() if as_group(ob) is not None]
        return json_reply({"proxies": [shapes.proxy(rt, tag) for tag in tags]})
    group = as_group(rt.outbounds.get(seg[0]))
    if group is None or len(seg) > 2 or (len(seg) == 2 and seg[1] != "delay"):
        return NOT_FOUND
    if len(seg) == 1:
        return json_reply(shapes.proxy(rt, seg[0]))
    timeout = positive_int(request.query.get("timeout", ""), 60_000)
    if timeout is None:
        return BAD_REQUEST
    try:
        with trio.fail_after(timeout / 1000):
            return json_reply(await group.probe_all())
    except (trio.TooSlowError, TimeoutError):
        return message(504, "Timeout")
