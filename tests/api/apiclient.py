"""A small blocking client for the controller API (h11 + wsproto), for tests.

Used in-process (from a thread) and as a script inside a lab namespace:
    python apiclient.py '{"op": "request", "method": "GET", "url": "http://127.0.0.1:9090/"}'
prints one JSON line: the result.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import h11
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionType
from wsproto.events import CloseConnection, Ping, TextMessage

Headers = dict[str, str]


def _connect(url: str, timeout: float) -> tuple[socket.socket, str]:
    parts = urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    sock = socket.create_connection((host, parts.port or 80), timeout=timeout)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return sock, target


def _headers(url: str, extra: Headers | None) -> list[tuple[str, str]]:
    host = urlsplit(url).netloc
    return [("host", host), *((extra or {}).items())]


def _events(conn: h11.Connection, sock: socket.socket) -> Any:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError:  # e.g. a stream cut by the server stopping
            return
        if event is h11.NEED_DATA:
            conn.receive_data(sock.recv(65536))
            continue
        yield event


def request(
    method: str, url: str, *, headers: Headers | None = None, body: bytes = b"",
    timeout: float = 10.0,
) -> dict[str, Any]:  # fmt: skip
    """One request; ``{"status", "headers", "body"}`` (body as text)."""
    sock, target = _connect(url, timeout)
    try:
        conn = h11.Connection(h11.CLIENT)
        hdrs = _headers(url, headers)
        if body or method in ("PUT", "PATCH", "POST"):
            hdrs.append(("content-length", str(len(body))))
        sock.sendall(conn.send(h11.Request(method=method, target=target, headers=hdrs)))
        if body:
            sock.sendall(conn.send(h11.Data(data=body)))
        sock.sendall(conn.send(h11.EndOfMessage()))
        status, got, data = 0, {}, bytearray()
        for event in _events(conn, sock):
            if isinstance(event, h11.Response):
                status = event.status_code
                got = {k.decode(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                data += event.data
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        return {"status": status, "headers": got, "body": data.decode("utf-8", "replace")}
    finally:
        sock.close()


def stream(
    url: str, count: int, *, headers: Headers | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """A chunked NDJSON stream: the first ``count`` lines, parsed."""
    sock, target = _connect(url, timeout)
    try:
        conn = h11.Connection(h11.CLIENT)
        req = h11.Request(method="GET", target=target, headers=_headers(url, headers))
        sock.sendall(conn.send(req) + conn.send(h11.EndOfMessage()))
        status, got, buf, lines = 0, {}, b"", []
        for event in _events(conn, sock):
            if isinstance(event, h11.Response):
                status = event.status_code
                got = {k.decode(): v.decode() for k, v in event.headers}
                if status != 200:
                    break
            elif isinstance(event, h11.Data):
                buf += event.data
                while b"\n" in buf and len(lines) < count:
                    line, buf = buf.split(b"\n", 1)
                    lines.append(json.loads(line))
                if len(lines) >= count:
                    break
            else:
                break
        return {"status": status, "headers": got, "lines": lines}
    finally:
        sock.close()


def websocket(
    url: str, count: int, *, headers: Headers | None = None, timeout: float = 10.0
) -> dict[str, Any]:
    """Upgrade and read ``count`` text messages (parsed); then close cleanly."""
    sock, target = _connect(url, timeout)
    try:
        conn = h11.Connection(h11.CLIENT)
        key = base64.b64encode(os.urandom(16)).decode()
        hdrs = [
            *_headers(url, headers), ("connection", "Upgrade"), ("upgrade", "websocket"),
            ("sec-websocket-version", "13"), ("sec-websocket-key", key),
        ]  # fmt: skip
        sock.sendall(conn.send(h11.Request(method="GET", target=target, headers=hdrs)))
        sock.sendall(conn.send(h11.EndOfMessage()))
        for event in _events(conn, sock):
            if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                break
            if isinstance(event, h11.Response):
                return {"status": event.status_code, "messages": []}
        ws = WsConnection(ConnectionType.CLIENT, trailing_data=conn.trailing_data[0])
        messages: list[Any] = []
        text = ""
        deadline = time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            for event in ws.events():
                if isinstance(event, TextMessage):
                    text += event.data
                    if event.message_finished:
                        messages.append(json.loads(text))
                        text = ""
                elif isinstance(event, Ping):
                    sock.sendall(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    return {"status": 101, "messages": messages, "closed": True}
            if len(messages) >= count:
                break
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            if not data:
                break
            ws.receive_data(data)
        sock.sendall(ws.send(CloseConnection(code=1000)))
        return {"status": 101, "messages": messages}
    finally:
        sock.close()


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    op = spec.pop("op")
    if op == "request":
        if "body" in spec:
            spec["body"] = spec["body"].encode()
        result = request(spec.pop("method"), spec.pop("url"), **spec)
    elif op == "stream":
        result = stream(spec.pop("url"), spec.pop("count"), **spec)
    else:
        result = websocket(spec.pop("url"), spec.pop("count"), **spec)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
