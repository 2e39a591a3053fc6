"""DNS over a byte stream (RFC 1035 4.2.2): what the TCP listener and the ``dns``
outbound's TCP flows share."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final, Protocol

import trio

__all__ = ["Answerer", "serve_dns_stream"]

MAX_MESSAGE: Final = 65535


class MessageStream(Protocol):
    """A byte stream both ways (a trio stream, a flow's client side)."""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray: ...


class Answerer(Protocol):
    async def answer(self, data: bytes, *, udp: bool) -> bytes | None: ...


async def serve_dns_stream(
    stream: MessageStream,
    prefix: bytes,
    service: Callable[[], Answerer],
    idle: float,
    on_message: Callable[[int, int], None] | None = None,
) -> int:
    """Answer length-prefixed DNS messages (RFC 1035 4.2.2) until EOF or ``idle``
    seconds without a query; ``prefix`` holds bytes already read. Returns the number
    of queries answered; ``on_message(request_bytes, reply_bytes)`` counts traffic."""
    buffer = bytearray(prefix)
    answered = 0
    while True:
        with trio.move_on_after(idle):
            while (length := _complete(buffer)) is None:
                chunk = await stream.receive_some(MAX_MESSAGE)
                if not chunk:
                    return answered
                buffer += chunk
        if length is None:
            return answered  # idle
        message = bytes(buffer[2 : 2 + length])
        del buffer[: 2 + length]
        reply = await service().answer(message, udp=False)
        if reply is None:
            continue
        await stream.send_all(struct.pack(">H", len(reply)) + reply)
        answered += 1
        if on_message is not None:
            on_message(2 + length, 2 + len(reply))


def _complete(buffer: bytearray) -> int | None:
    """The length of the message at the start of ``buffer`` once all of it is there."""
    if len(buffer) < 2:
        return None
    length: int = struct.unpack_from(">H", buffer)[0]
    return length if len(buffer) >= 2 + length else None
