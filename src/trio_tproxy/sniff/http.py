"""HTTP/1.x request sniffer: the Host header of a client's first request.

Follows v2ray ``common/protocol/http/sniff.go``: the stream must start with one of
its methods (case-insensitive), the ``Host`` key is matched case-insensitively, the
value is trimmed, lower-cased and its port dropped. Stricter than v2ray where it
costs nothing: the method must be followed by a space and the request line must end
in ``HTTP/1.x``, so "getaway..." or an HTTP/2 preface is not taken for HTTP/1.

Outcomes:

* a prefix of ``<method> `` or of the request line/headers -> NEED_MORE;
* a complete ``Host:`` line -> Sniffed at once, even before the blank line;
* the blank line reached without a Host header -> NOT_THIS (v2ray: NoClue);
* ``MAX_PEEK`` bytes without either -> NOT_THIS.

An IP literal or otherwise invalid Host gives ``Sniffed("http1", None)``: the
protocol is known, there is just no domain to route on.
"""

from __future__ import annotations

import re
from typing import Final

from .outcome import NEED_MORE, NOT_THIS, Sniffed, SniffOutcome, to_domain

__all__ = ["MAX_PEEK", "PROTOCOL", "sniff_http"]

PROTOCOL: Final = "http1"

# Request line plus headers up to the Host line. 16 KiB is h11's default limit for an
# incomplete event and above common server limits (nginx 8 KiB per line, Apache
# 8190); Host is usually the first header, so real requests decide in < 1 KiB.
MAX_PEEK: Final = 16384

_METHODS: Final = frozenset(
    (b"get", b"post", b"head", b"put", b"delete", b"options", b"connect", b"patch", b"trace")
)
_METHOD_PREFIXES: Final = frozenset(
    method[:n] for method in (m + b" " for m in _METHODS) for n in range(len(method))
)
_LONGEST_METHOD: Final = max(len(m) for m in _METHODS)

_DIGITS: Final = frozenset(b"0123456789")
_MAX_PORT_DIGITS: Final = 5

# The common case in one C-level match: a request whose Host line is complete and
# holds a plain name, maybe with a port. It accepts exactly what
# _sniff_step_by_step() turns into Sniffed(to_domain(name)) (a test checks this);
# anything else takes the step-by-step path, which knows NEED_MORE. Header lines
# before Host must not be blank ("" or "\r"), which would end the headers, nor be a
# Host line themselves, so that the first Host header is the one that counts.
_COMPLETE_REQUEST_RE: Final = re.compile(
    rb"(?i:get|post|head|put|delete|options|connect|patch|trace) [^\n]+ HTTP/1\.[0-9]\r?\n"
    rb"(?:(?!(?i:host):)(?:[^\r\n][^\n]*|\r[^\n]+)\n)*?"
    rb"(?i:host):[ \t]*([A-Za-z0-9.-]+)(?::[0-9]{1,5})?[ \t]*\r?\n"
)
# The fast path looks this far only: clients send Host first or second, while a
# request without Host in its first 2 KiB would cost the regex ~50 ns a byte here
# before the step-by-step path decides anyway.
_FAST_PATH_WINDOW: Final = 2048


def sniff_http(data: bytes) -> SniffOutcome:
    """Sniff the Host of an HTTP/1.x request at the start of a TCP stream."""
    if len(data) > MAX_PEEK:
        data = data[:MAX_PEEK]
    request = _COMPLETE_REQUEST_RE.match(data, 0, _FAST_PATH_WINDOW)
    if request is not None:
        return Sniffed(PROTOCOL, to_domain(request.group(1)))
    return _sniff_step_by_step(data)


def _sniff_step_by_step(data: bytes) -> SniffOutcome:
    space = data.find(b" ", 0, _LONGEST_METHOD + 1)
    if space < 0:
        if len(data) <= _LONGEST_METHOD and data.lower() in _METHOD_PREFIXES:
            return NEED_MORE
        return NOT_THIS
    if data[:space].lower() not in _METHODS:
        return NOT_THIS

    line_end = data.find(b"\n", space)
    if line_end < 0:
        return _need_more_unless_full(data)
    if not _ends_with_http1_version(data, space, line_end):
        return NOT_THIS

    # The first blank line ends the header block ("\r\n\r\n", or "\n\n" as v2ray allows).
    headers_end = len(data)
    for blank_line in (b"\n\r\n", b"\n\n"):
        found = data.find(blank_line, line_end, headers_end + len(blank_line) - 1)
        if found >= 0:
            headers_end = found + 1
    # Key exactly "host" in any case right after a line break, as v2ray (no trimming).
    headers = data[line_end:headers_end].lower()
    host_start = headers.find(b"\nhost:")
    if host_start >= 0:
        host_end = headers.find(b"\n", host_start + 6)
        if host_end >= 0:
            value = data[line_end + host_start + 6 : line_end + host_end]
            return Sniffed(PROTOCOL, _host_to_domain(value))
    if headers_end < len(data):
        return NOT_THIS
    return _need_more_unless_full(data)


def _ends_with_http1_version(data: bytes, space: int, line_end: int) -> bool:
    """``<method> <target> HTTP/1.x[\\r]`` with a non-empty target; HTTP/0.9 and the
    HTTP/2 preface ("PRI * HTTP/2.0") are not ours."""
    stop = line_end - 1 if data[line_end - 1] == 0x0D else line_end
    return (
        stop - 10 > space and data[stop - 9 : stop - 1] == b" HTTP/1." and data[stop - 1] in _DIGITS
    )


def _need_more_unless_full(data: bytes) -> SniffOutcome:
    return NEED_MORE if len(data) < MAX_PEEK else NOT_THIS


def _host_to_domain(value: bytes) -> str | None:
    """``Host`` value -> domain: trim, strip ``:port`` (also after ``[v6]``)."""
    host = value.strip()
    if b":" not in host:
        return to_domain(host)
    if host.startswith(b"["):
        # "[v6]" or "[v6]:port": an IP literal, never a domain.
        return None
    name, _, port = host.partition(b":")
    if not port.isdigit() or len(port) > _MAX_PORT_DIGITS:
        # Bare IPv6 ("::1" has more colons) or a junk port: v2ray's ParseHost fails.
        return None
    return to_domain(name)
