"""HTTP/1.x Host sniffing, table-driven."""

from __future__ import annotations

import pytest

from trio_tproxy.sniff import NEED_MORE, NOT_THIS, Sniffed, SniffOutcome, sniff_http
from trio_tproxy.sniff.http import MAX_PEEK


def http1(domain: str | None) -> Sniffed:
    return Sniffed("http1", domain)


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", http1("example.com")),
        (b"get / HTTP/1.1\r\nhost: Example.COM\r\n\r\n", http1("example.com")),
        (b"GeT / HTTP/1.0\r\nHOST:example.com\r\n\r\n", http1("example.com")),
        (b"POST /x HTTP/1.1\r\nHost: example.com:8080\r\n\r\n", http1("example.com")),
        (b"HEAD / HTTP/1.1\r\nHost: \t example.com \t\r\n\r\n", http1("example.com")),
        (b"PUT / HTTP/1.1\nHost: example.com\n\n", http1("example.com")),  # bare LF
        (b"DELETE / HTTP/1.1\r\nHost: example.com.\r\n\r\n", http1("example.com")),
        (b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n", http1("example.com")),
        (
            b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
            http1("example.com"),
        ),
        (b"PATCH / HTTP/1.1\r\nHost: example.com\r\n\r\n", http1("example.com")),
        (b"TRACE / HTTP/1.1\r\nHost: example.com\r\n\r\n", http1("example.com")),
        (
            b"GET / HTTP/1.1\r\nUser-Agent: x\r\nAccept: */*\r\nHost: b\xc3\xbccher.example\r\n\r\n",
            http1("xn--bcher-kva.example"),
        ),
        # IP literals and junk: it is HTTP, there is just no domain
        (b"GET / HTTP/1.1\r\nHost: 192.0.2.1\r\n\r\n", http1(None)),
        (b"GET / HTTP/1.1\r\nHost: 192.0.2.1:80\r\n\r\n", http1(None)),
        (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n\r\n", http1(None)),
        (b"GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n", http1(None)),
        (b"GET / HTTP/1.1\r\nHost: 2001:db8::1\r\n\r\n", http1(None)),
        (b"GET / HTTP/1.1\r\nHost: example.com:http\r\n\r\n", http1(None)),
        (b"GET / HTTP/1.1\r\nHost: my_host\r\n\r\n", http1(None)),
        (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", http1(None)),
        # the Host line decides as soon as it is complete
        (b"GET / HTTP/1.1\r\nHost: example.com\r\nAccept", http1("example.com")),
        # no Host before the end of the headers
        (b"GET / HTTP/1.1\r\n\r\n", NOT_THIS),
        (b"GET / HTTP/1.0\r\nAccept: */*\r\n\r\nHost: example.com\r\n", NOT_THIS),
        (b"GET / HTTP/1.1\r\nX-Forwarded-Host: example.com\r\n\r\n", NOT_THIS),
        (b"GET / HTTP/1.1\r\nHost : example.com\r\n\r\n", NOT_THIS),  # as v2ray: key untrimmed
        # not HTTP/1.x
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", NOT_THIS),
        (b"GET / HTTP/2.0\r\nHost: example.com\r\n\r\n", NOT_THIS),
        (b"GET /\r\n", NOT_THIS),  # HTTP/0.9
        (b"GET HTTP/1.1\r\nHost: example.com\r\n\r\n", NOT_THIS),  # no target
        (b"GETX / HTTP/1.1\r\nHost: example.com\r\n\r\n", NOT_THIS),
        (b"getaway", NOT_THIS),
        (b"SSH-2.0-OpenSSH_9.6\r\n", NOT_THIS),
        (b"\x16\x03\x01\x02\x00", NOT_THIS),
        (b"GE\x00", NOT_THIS),
        # valid so far
        (b"", NEED_MORE),
        (b"g", NEED_MORE),
        (b"OPTIO", NEED_MORE),
        (b"GET ", NEED_MORE),
        (b"GET /index.html HTTP/1.", NEED_MORE),
        (b"GET / HTTP/1.1\r\n", NEED_MORE),
        (b"GET / HTTP/1.1\r\nHost: exam", NEED_MORE),
        (b"GET / HTTP/1.1\r\nHost: example.com\r", NEED_MORE),
        (b"GET / HTTP/1.1\r\nAccept: */*\r\n", NEED_MORE),
    ],
)
def test_sniff_http(request_bytes: bytes, expected: SniffOutcome) -> None:
    assert sniff_http(request_bytes) == expected


def test_gives_up_at_max_peek() -> None:
    head = b"GET / HTTP/1.1\r\nCookie: "
    assert sniff_http(head + b"x" * (MAX_PEEK - len(head) - 1)) is NEED_MORE
    assert sniff_http(head + b"x" * (MAX_PEEK - len(head))) is NOT_THIS
    long_target = b"GET /" + b"a" * MAX_PEEK
    assert sniff_http(long_target) is NOT_THIS


def test_host_beyond_max_peek_is_not_seen() -> None:
    head = b"GET / HTTP/1.1\r\nCookie: " + b"x" * MAX_PEEK
    assert sniff_http(head + b"\r\nHost: example.com\r\n\r\n") is NOT_THIS


def test_first_host_header_wins() -> None:
    data = b"GET / HTTP/1.1\r\nHost: first.example\r\nHost: second.example\r\n\r\n"
    assert sniff_http(data) == http1("first.example")
