"""The hub's link to each worker process: JSON objects, one per line, over a unix socket.

A request carries an ``id`` and gets exactly one answer with the same ``id`` (``result``
or ``error``); everything else is a one-way notice. Both ends are ours (forked from one
supervisor), but a line is still bounded and checked: a bad one ends the link, which the
worker opens again.
"""

from __future__ import annotations

import json
from typing import Any

import trio

Message = dict[str, Any]

MAX_LINE = 64 * 1024 * 1024  # a /connections snapshot of every flow of a busy worker
RECEIVE_SIZE = 256 * 1024


class LinkError(Exception):
    """The other end sent what is not a message of ours."""


class Link:
    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self._sending = trio.Lock()
        self._buffer = bytearray()
        self._scanned = 0  # bytes of the buffer known to hold no newline

    async def send(self, message: Message) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        async with self._sending:
            await self.stream.send_all(data)

    async def receive(self) -> Message | None:
        """The next message; None when the other end closed the link."""
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n", self._scanned)
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                self._scanned = 0
                try:
                    message = json.loads(line)
                except ValueError as exc:
                    raise LinkError(f"not JSON: {exc}") from None
                if not isinstance(message, dict):
                    raise LinkError("not a JSON object")
                return message
            self._scanned = len(buffer)
            if len(buffer) > MAX_LINE:
                raise LinkError(f"a message over {MAX_LINE} bytes")
            chunk = await self.stream.receive_some(RECEIVE_SIZE)
            if not chunk:
                return None
            buffer += chunk

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)
