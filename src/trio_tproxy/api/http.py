"""HTTP/1.1 and WebSocket for the controller API: h11 and wsproto (sans-IO) on trio.

One task per client connection, as trio's own servers do: read a request under a
deadline, hand it to the controller, write the answer; keep-alive loops. An answer is a
:class:`Reply` (a body) or a :class:`Feed` (a stream of JSON messages: /traffic, /logs,
/memory, /connections): over a WebSocket when the client asked to upgrade, else as a
chunked HTTP response with one JSON document per line (NDJSON), as mihomo does. A
malformed request gets h11's 4xx hint and the connection closes; nothing a client sends
reaches the gateway's nursery as an exception.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs
import h11
import trio
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionType
from wsproto.events import CloseConnection, Ping, TextMessage
from wsproto.utilities import ProtocolError, generate_accept_token

log = logging.getLogger("trio_tproxy.api")

# A request head (line + headers) larger than this is refused (431): dashboards send a
# few hundred bytes; the bound keeps a hostile client from growing our buffer.
MAX_HEAD_BYTES = 16 * 1024
# PATCH /configs and PUT /proxies bodies are tiny JSON objects.
MAX_BODY_BYTES = 64 * 1024
# A client gets this long to deliver a whole request, and an idle keep-alive
# connection this long to start the next one.
REQUEST_TIMEOUT = 10.0
KEEPALIVE_IDLE = 60.0
RECEIVE_SIZE = 16 * 1024
# A client that stops reading (a dashboard tab frozen by the browser) would otherwise
# hold its connection, and a stream's producer, forever once the socket buffers fill.
SEND_TIMEOUT = 30.0

Send = Callable[[str], Awaitable[None]]
# How a client's going away shows when we send to or read from it.
CLIENT_GONE = (trio.BrokenResourceError, trio.ClosedResourceError, OSError)


@attrs.frozen
class Request:
    method: str
    path: str  # percent-decoded
    raw_path: str  # as sent (segments may hold an encoded "/")
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes = b""

    @property
    def wants_websocket(self) -> bool:
        return self.headers.get("upgrade", "").lower() == "websocket"


@attrs.frozen
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class Feed:
    """A stream answer: ``produce(send)`` sends JSON texts until cancelled."""

    produce: Callable[[Send], Awaitable[None]]


def json_reply(body: object, status: int = 200) -> Reply:
    return Reply(status, json.dumps(body, separators=(",", ":")).encode())


def message(status: int, text: str) -> Reply:
    """mihomo's error body: ``{"message": text}``."""
    return json_reply({"message": text}, status)


Handler = Callable[[Request], Awaitable[Reply | Feed]]
CommonHeaders = Callable[[Request | None], list[tuple[str, str]]]


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def serve_connection(stream: trio.abc.Stream, handle: Handler, common: CommonHeaders) -> None:
    """Serve one client connection until it closes, errs or idles out."""
    stream = _Patient(stream)
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
    timeout = REQUEST_TIMEOUT
    while True:
        try:
            with trio.fail_after(timeout):
                request = await _read_request(conn, stream)
        except trio.TooSlowError:
            return
        except BadRequest as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                await _send_reply(conn, stream, message(exc.status, str(exc)), common(None))
            return
        if request is None:
            return
        head = request.method == "HEAD"  # answered as GET, without the body
        answer = await handle(attrs.evolve(request, method="GET") if head else request)
        if isinstance(answer, Feed) and head:
            answer = Reply(200)
        if isinstance(answer, Feed):
            if request.wants_websocket:
                await _websocket(conn, stream, request, answer, common(request))
            else:
                await _chunked(conn, stream, answer, common(request))
            return
        await _send_reply(conn, stream, answer, common(request), head=head)
        if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
            return
        conn.start_next_cycle()
        timeout = KEEPALIVE_IDLE


class _Patient(trio.abc.Stream):
    """The client's stream, each send bounded by SEND_TIMEOUT (then: broken)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with trio.move_on_after(SEND_TIMEOUT) as scope:
            await self.inner.send_all(data)
        if scope.cancelled_caught:
            raise trio.BrokenResourceError("the client stopped reading")

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> object:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            raise BadRequest(exc.error_status_hint, "Body invalid") from None
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(RECEIVE_SIZE)))
            continue
        return event


async def _read_request(conn: h11.Connection, stream: trio.abc.Stream) -> Request | None:
    event = await _next_event(conn, stream)
    if isinstance(event, h11.ConnectionClosed):
        return None
    if not isinstance(event, h11.Request):
        raise BadRequest(400, "Body invalid")
    body = bytearray()
    while True:
        part = await _next_event(conn, stream)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > MAX_BODY_BYTES:
                raise BadRequest(413, "Body too large")
        elif isinstance(part, h11.EndOfMessage):
            break
        else:
            raise BadRequest(400, "Body invalid")
    return _request(event, bytes(body))


def _request(event: h11.Request, body: bytes) -> Request:
    try:
        target = event.target.decode("ascii")
        method = event.method.decode("ascii").upper()
        headers = {k.decode("ascii").lower(): v.decode("latin-1") for k, v in event.headers}
    except UnicodeDecodeError:
        raise BadRequest(400, "Body invalid") from None
    parts = urlsplit(target)
    raw_path = parts.path or "/"
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    return Request(method, unquote(raw_path), raw_path, query, headers, body)


async def _send_reply(
    conn: h11.Connection,
    stream: trio.abc.Stream,
    reply: Reply,
    common: list[tuple[str, str]],
    *,
    head: bool = False,
) -> None:
    headers = [*common, *reply.headers, ("content-length", str(len(reply.body)))]
    if reply.body or reply.status not in (204, 304):
        headers.append(("content-type", reply.content_type))
    response = h11.Response(status_code=reply.status, headers=headers, reason=_reason(reply.status))
    await stream.send_all(conn.send(response))
    if reply.body and not head:
        await stream.send_all(conn.send(h11.Data(data=reply.body)))
    await stream.send_all(conn.send(h11.EndOfMessage()))


def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


async def _chunked(
    conn: h11.Connection, stream: trio.abc.Stream, feed: Feed, common: list[tuple[str, str]]
) -> None:
    headers = [*common, ("content-type", "application/json")]  # no length: chunked
    await stream.send_all(conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK")))

    async def send(text: str) -> None:
        await stream.send_all(conn.send(h11.Data(data=text.encode() + b"\n")))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_until_eof, stream, nursery.cancel_scope)
        # Caught here, inside: out of the nursery it would come wrapped in a group.
        with contextlib.suppress(*CLIENT_GONE):
            await feed.produce(send)
        nursery.cancel_scope.cancel()


async def _until_eof(stream: trio.abc.Stream, scope: trio.CancelScope) -> None:
    """A chunked stream's client sends nothing more: its EOF (or RST) ends the feed."""
    try:
        while await stream.receive_some(RECEIVE_SIZE):
            pass
    except CLIENT_GONE:
        pass
    scope.cancel()


async def _websocket(
    conn: h11.Connection,
    stream: trio.abc.Stream,
    request: Request,
    feed: Feed,
    common: list[tuple[str, str]],
) -> None:
    key = request.headers.get("sec-websocket-key", "")
    if not key.isascii() or not key or request.headers.get("sec-websocket-version") != "13":
        await _send_reply(conn, stream, message(400, "Body invalid"), common)
        return
    accept = generate_accept_token(key.encode("ascii"))
    headers = [("upgrade", "websocket"), ("connection", "Upgrade"),
               ("sec-websocket-accept", accept.decode("ascii"))]  # fmt: skip
    switching = h11.InformationalResponse(
        status_code=101, headers=headers, reason=b"Switching Protocols"
    )
    await stream.send_all(conn.send(switching))
    ws = WsConnection(ConnectionType.SERVER, trailing_data=conn.trailing_data[0])
    lock = trio.Lock()  # the feed and the reader's pongs share the stream

    async def write(data: bytes) -> None:
        async with lock:
            await stream.send_all(data)

    async def send(text: str) -> None:
        await write(ws.send(TextMessage(data=text)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_ws_reader, stream, ws, write, nursery.cancel_scope)
        with contextlib.suppress(*CLIENT_GONE, ProtocolError):  # as in _chunked
            await feed.produce(send)
            with trio.move_on_after(1):
                await write(ws.send(CloseConnection(code=1000)))
        nursery.cancel_scope.cancel()


async def _ws_reader(
    stream: trio.abc.Stream,
    ws: WsConnection,
    write: Callable[[bytes], Awaitable[None]],
    scope: trio.CancelScope,
) -> None:
    """Answer pings and the close handshake; the client's messages are ignored."""
    try:
        while True:
            for event in ws.events():
                if isinstance(event, Ping):
                    await write(ws.send(event.response()))
                elif isinstance(event, CloseConnection):
                    await write(ws.send(event.response()))
                    return
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            ws.receive_data(bytes(data))
    except (ProtocolError, *CLIENT_GONE):
        return
    finally:
        scope.cancel()
