"""The HTTP/1.1 that DNS over HTTPS needs (RFC 8484 POST; RFC 9112 framing), sans-IO.

:func:`read_response` takes the bytes received so far and returns a complete response
and how many bytes it used, or :data:`NEED_MORE`; it raises :class:`HttpError` for
anything malformed or oversized. It is stateless (the caller re-feeds the growing
buffer): a DNS answer is at most 64 KiB, so re-parsing a few short heads is cheaper
than carrying parser state around.
"""

from __future__ import annotations

import re
from typing import Final

import attrs

__all__ = ["MAX_BODY", "MAX_HEAD", "NEED_MORE", "HttpError", "HttpResponse", "build_post",
           "read_response"]  # fmt: skip

# A response head bigger than this is not a DoH server talking.
MAX_HEAD: Final = 16384
# The largest DNS message (a 16-bit length), plus slack for chunk framing.
MAX_BODY: Final = 65535
# Interim (1xx) responses tolerated before the real one.
MAX_INTERIM: Final = 4

_STATUS_RE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: [^\r\n]*)?")
_TOKEN_RE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class _NeedMore:
    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = _NeedMore()


class HttpError(ValueError):
    """The server's bytes are not a usable HTTP/1.1 response."""


@attrs.frozen
class HttpResponse:
    status: int
    headers: dict[str, str]  # lower-case names; repeated fields joined with ", "
    body: bytes
    keep_alive: bool


def build_post(host: str, path: str, body: bytes, content_type: str) -> bytes:
    """A POST of ``body`` with the headers RFC 8484 section 4.1 asks for."""
    authority = f"[{host}]" if ":" in host else host
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {authority}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Accept: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode("ascii") + body


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.split(b"\r\n")
    status = _STATUS_RE.fullmatch(lines[0])
    if status is None:
        raise HttpError(f"bad status line {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN_RE.fullmatch(name):
            raise HttpError(f"bad header line {line[:80]!r}")
        key = name.decode("ascii").lower()
        text = value.strip(b" \t").decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return int(status.group(1)), headers


def _chunked(data: bytes, start: int) -> tuple[bytes, int] | _NeedMore:
    body = bytearray()
    pos = start
    while True:
        line_end = data.find(b"\r\n", pos)
        if line_end < 0:
            if len(data) - pos > 64:
                raise HttpError("chunk size line too long")
            return NEED_MORE
        size_text = data[pos:line_end].split(b";", 1)[0].strip()
        if not size_text or not re.fullmatch(rb"[0-9A-Fa-f]{1,8}", size_text):
            raise HttpError(f"bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        if len(body) + size > MAX_BODY:
            raise HttpError("body larger than a DNS message")
        pos = line_end + 2
        if size == 0:  # the last chunk; trailers end with an empty line
            end = data.find(b"\r\n\r\n", pos - 2)
            if end < 0:
                return NEED_MORE
            return bytes(body), end + 4
        if len(data) < pos + size + 2:
            return NEED_MORE
        if data[pos + size : pos + size + 2] != b"\r\n":
            raise HttpError("chunk not followed by CRLF")
        body += data[pos : pos + size]
        pos += size + 2


def _content_length(headers: dict[str, str]) -> int | None:
    text = headers.get("content-length")
    if text is None:
        return None
    values = {v.strip() for v in text.split(",")}
    value = next(iter(values))
    if len(values) != 1 or not (value.isascii() and value.isdigit()):  # not "¹": int() refuses
        raise HttpError(f"bad Content-Length {text[:40]!r}")
    length = int(value)
    if length > MAX_BODY:
        raise HttpError("body larger than a DNS message")
    return length


def read_response(data: bytes, *, eof: bool = False) -> tuple[HttpResponse, int] | _NeedMore:
    """One response from the start of ``data`` (``eof``: the peer closed after it)."""
    start = 0
    for _ in range(MAX_INTERIM + 1):
        head_end = data.find(b"\r\n\r\n", start)
        if head_end < 0:
            if len(data) - start > MAX_HEAD:
                raise HttpError("response head too large")
            if eof:
                raise HttpError("connection closed inside the response head")
            return NEED_MORE
        if head_end - start > MAX_HEAD:
            raise HttpError("response head too large")
        status, headers = _parse_head(data[start:head_end])
        body_start = head_end + 4
        if 100 <= status < 200:  # interim: 100 Continue and friends carry no body
            start = body_start
            continue
        keep_alive = "close" not in headers.get("connection", "").lower()
        if status in (204, 304):
            return HttpResponse(status, headers, b"", keep_alive), body_start
        if "chunked" in headers.get("transfer-encoding", "").lower():
            found = _chunked(data, body_start)
            if isinstance(found, _NeedMore):
                if eof:
                    raise HttpError("connection closed inside a chunked body")
                return NEED_MORE
            body, end = found
            return HttpResponse(status, headers, body, keep_alive), end
        length = _content_length(headers)
        if length is None:  # delimited by the close (RFC 9112 6.3 rule 8)
            if len(data) - body_start > MAX_BODY:
                raise HttpError("body larger than a DNS message")
            if not eof:
                return NEED_MORE
            return HttpResponse(status, headers, data[body_start:], False), len(data)
        if len(data) < body_start + length:
            if eof:
                raise HttpError("connection closed inside the body")
            return NEED_MORE
        end = body_start + length
        return HttpResponse(status, headers, data[body_start:end], keep_alive), end
    raise HttpError("too many interim responses")
