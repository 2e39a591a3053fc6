"""dns/http1.py: the DoH client's HTTP/1.1, fed whole, byte by byte, cut short, garbled."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_tproxy.dns.http1 import NEED_MORE, HttpError, HttpResponse, build_post, read_response

BODY = bytes(range(40))
FIXED = (b"HTTP/1.1 200 OK\r\nContent-Type: application/dns-message\r\n"
         b"Content-Length: 40\r\n\r\n" + BODY)  # fmt: skip
CHUNKED = (b"HTTP/1.1 200 OK\r\ncontent-type: application/dns-message\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n"
           b"10\r\n" + BODY[:16] + b"\r\n18;ext=1\r\n" + BODY[16:] + b"\r\n0\r\nX-T: y\r\n\r\n")  # fmt: skip
CLOSE = b"HTTP/1.0 200 OK\r\nContent-Type: application/dns-message\r\n\r\n" + BODY
INTERIM = b"HTTP/1.1 100 Continue\r\n\r\n" + FIXED


def test_post_request_bytes() -> None:
    assert build_post("dns.example", "/dns-query", b"\x01\x02", "application/dns-message") == (
        b"POST /dns-query HTTP/1.1\r\nHost: dns.example\r\n"
        b"Content-Type: application/dns-message\r\nAccept: application/dns-message\r\n"
        b"Content-Length: 2\r\n\r\n\x01\x02"
    )
    assert b"Host: [2001:db8::1]\r\n" in build_post("2001:db8::1", "/q", b"", "x/y")


@pytest.mark.parametrize(
    ("data", "keep_alive"),
    [(FIXED, True), (CHUNKED, True), (INTERIM, True),
     (FIXED.replace(b"OK\r\n", b"OK\r\nConnection: close\r\n"), False)],
)  # fmt: skip
def test_whole_and_byte_by_byte(data: bytes, keep_alive: bool) -> None:
    for cut in range(len(data)):
        assert read_response(data[:cut]) is NEED_MORE, cut
    found = read_response(data + b"HTTP/1.1 next")
    assert not isinstance(found, type(NEED_MORE))
    response, used = found
    assert used == len(data)
    assert (response.status, response.body, response.keep_alive) == (200, BODY, keep_alive)
    assert response.headers["content-type"] == "application/dns-message"


def test_close_delimited_body_needs_eof() -> None:
    assert read_response(CLOSE) is NEED_MORE
    found = read_response(CLOSE, eof=True)
    assert isinstance(found, tuple)
    assert found[0] == HttpResponse(200, {"content-type": "application/dns-message"}, BODY, False)


def test_error_status_is_returned_not_raised() -> None:
    found = read_response(b"HTTP/1.1 415 Unsupported Media Type\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(found, tuple) and found[0].status == 415


@pytest.mark.parametrize(
    "data",
    [
        b"HTTP/2 200\r\n\r\n",
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: \xb9\r\n\r\nx",  # latin-1 "¹": isdigit(), not int()
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X: " + b"a" * 20000 + b"\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n" * 6,
    ],
)
def test_garbage_raises_http_error(data: bytes) -> None:
    with pytest.raises(HttpError):
        read_response(data)


@pytest.mark.parametrize("data", [FIXED[:30], FIXED[:-1], CHUNKED[:-3]])
def test_eof_inside_a_response_is_an_error(data: bytes) -> None:
    with pytest.raises(HttpError):
        read_response(data, eof=True)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200), st.booleans(), st.integers(0, len(CHUNKED)))
def test_random_input_needs_more_parses_or_raises_http_error(
    junk: bytes, eof: bool, cut: int
) -> None:
    for data in (junk, CHUNKED[:cut] + junk, FIXED[:cut] + junk):
        with contextlib.suppress(HttpError):
            read_response(data, eof=eof)
