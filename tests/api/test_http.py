"""The HTTP layer over in-memory streams: any bytes give a 4xx (or an answer), never a crash.

h11's readers are the parser; what is ours is the loop around them, the limits and the
error answers, fed here whole, mutated and as hypothesis garbage.
"""

from __future__ import annotations

import logging
import re

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_tproxy.api.http import Feed, Reply, Request, Send, json_reply, serve_connection

VALID = (
    b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n",
    b"PATCH /configs HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    b"HEAD /version HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /traffic HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
)


async def handle(request: Request) -> Reply | Feed:
    if request.path == "/traffic":

        async def produce(send: Send) -> None:
            await send('{"up":0,"down":0}')

        return Feed(produce)
    return json_reply({"path": request.path, "method": request.method, "n": len(request.body)})


async def exchange(data: bytes) -> bytes:
    """Serve one connection that sends ``data`` then EOF; everything it answered."""
    client, server = trio.testing.memory_stream_pair()
    answered = bytearray()
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def serve() -> None:
                try:
                    await serve_connection(server, handle, lambda _: [])
                finally:
                    await server.aclose()

            nursery.start_soon(serve)
            await client.send_all(data)
            await client.send_eof()
            while chunk := await client.receive_some(65536):
                answered += chunk
            nursery.cancel_scope.cancel()
    return bytes(answered)


def statuses(answer: bytes) -> list[int]:
    return [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


@pytest.mark.parametrize("request_bytes", VALID)
def test_valid_requests_whole_and_pipelined(request_bytes: bytes) -> None:
    answer = trio.run(exchange, request_bytes)
    assert statuses(answer)[0] in (200, 101)
    if b"Upgrade" not in request_bytes:
        assert statuses(trio.run(exchange, request_bytes * 3)) == [200] * 3


def test_head_has_no_body() -> None:
    answer = trio.run(exchange, VALID[2])
    assert answer.endswith(b"\r\n\r\n") and b"content-length: " in answer


@pytest.mark.parametrize("cut", [1, 5, 16, 30])
def test_truncated_requests_end_quietly(cut: int) -> None:
    answer = trio.run(exchange, VALID[1][:cut])
    assert answer == b"" or 400 <= statuses(answer)[0] < 500


def test_oversized_body_is_413() -> None:
    body = b"x" * (70 * 1024)
    data = b"PATCH /configs HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    assert statuses(trio.run(exchange, data)) == [413]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda v, i, b: v[:i] + b + v[i:],
            st.sampled_from(VALID),
            st.integers(0, 80),
            st.binary(min_size=1, max_size=8),
        ),
    )
)
def test_garbage_never_crashes(data: bytes) -> None:
    logger = logging.getLogger("trio_tproxy")
    errors: list[logging.LogRecord] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                errors.append(record)

    catch = Catch()
    logger.addHandler(catch)
    try:
        answer = trio.run(exchange, data)
    finally:
        logger.removeHandler(catch)
    assert not errors
    for status in statuses(answer):
        assert status in (101, 200) or 400 <= status < 500, answer[:200]


async def test_a_client_that_stops_reading_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    from trio_tproxy.api import http

    monkeypatch.setattr(http, "SEND_TIMEOUT", 0.5)
    client, server = trio.testing.lockstep_stream_pair()  # a send waits for the reader

    async def produce(send: Send) -> None:
        while True:
            await send("x" * 1000)

    async def endless(request: Request) -> Reply | Feed:
        return Feed(produce)

    async def read_a_little_then_stop() -> None:
        await client.send_all(b"GET /logs HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(5):  # the head and a few lines, then a frozen tab
            await client.receive_some(65536)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_a_little_then_stop)
        with trio.fail_after(3):
            await serve_connection(server, endless, lambda _: [])  # returns: dropped
        nursery.cancel_scope.cancel()
