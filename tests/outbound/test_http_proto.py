"""HTTP CONNECT request bytes and response-head parsing, byte by byte."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_tproxy.outbound.http_proto import (
    MAX_RESPONSE_HEAD,
    ConnectResponse,
    HttpProxyError,
    encode_connect,
    parse_connect_response,
)


def test_connect_request_bytes() -> None:
    assert encode_connect("example.com", 443) == (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
        b"Proxy-Connection: Keep-Alive\r\n\r\n"
    )
    v6 = ipaddress.IPv6Address("2001:db8::1")
    assert encode_connect(v6, 80).startswith(
        b"CONNECT [2001:db8::1]:80 HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n"
    )
    v4 = ipaddress.IPv4Address("192.0.2.1")
    assert encode_connect(v4, 22).startswith(b"CONNECT 192.0.2.1:22 HTTP/1.1\r\n")


def test_basic_credentials() -> None:
    # RFC 7617 §2 example: Aladdin / open sesame
    wire = encode_connect("example.com", 443, ("Aladdin", "open sesame"))
    assert b"\r\nProxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n" in wire
    # UTF-8 before base64 (RFC 7617 charset="UTF-8"); a colon is fine in the password
    wire = encode_connect("example.com", 443, ("jörg", "a:b"))
    assert b"Basic asO2cmc6YTpi\r\n" in wire
    with pytest.raises(ValueError, match="cannot contain ':'"):
        encode_connect("example.com", 443, ("a:b", "c"))


@pytest.mark.parametrize(
    ("wire", "response"),
    [
        (
            b"HTTP/1.1 200 Connection established\r\n\r\n",
            ConnectResponse(200, "Connection established"),
        ),
        (b"HTTP/1.0 200 OK\r\nProxy-Agent: tinyproxy/1.11.1\r\n\r\n", ConnectResponse(200, "OK")),
        (b"HTTP/1.1 204\r\n\r\n", ConnectResponse(204, "")),
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n",
            ConnectResponse(407, "Proxy Authentication Required"),
        ),
        (b"HTTP/1.1 200 OK\n\n", ConnectResponse(200, "OK")),  # bare LF ends lines too
    ],
)
def test_response_heads(wire: bytes, response: ConnectResponse) -> None:
    for cut in range(len(wire)):
        assert parse_connect_response(wire[:cut]) is None, cut
    assert parse_connect_response(wire) == (response, len(wire))
    # the tunnel's first bytes may follow in the same read: they are not consumed
    assert parse_connect_response(wire + b"\x16\x03\x01") == (response, len(wire))


def test_only_2xx_opens_the_tunnel() -> None:
    assert ConnectResponse(200, "").opens_tunnel
    assert ConnectResponse(299, "").opens_tunnel
    assert not ConnectResponse(199, "").opens_tunnel
    assert not ConnectResponse(301, "").opens_tunnel
    assert not ConnectResponse(407, "").opens_tunnel


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"SSH-2.0-OpenSSH\r\n", "not an HTTP response"),
        (b"\x05\x00", "not an HTTP response"),
        (b"H", None),  # a valid prefix: need more
        (b"HTTP/2 200\r\n\r\n", "not an HTTP response"),
        (b"HTTP/1.1 20 OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 200OK\r\n\r\n", "bad status line"),
        (b"HTTP/1.1 " + b"x" * MAX_RESPONSE_HEAD, "longer than"),
    ],
)
def test_bad_responses(wire: bytes, error: str | None) -> None:
    if error is None:
        assert parse_connect_response(wire) is None
        return
    with pytest.raises(HttpProxyError, match=error):
        parse_connect_response(wire)


@given(st.binary(max_size=400))
def test_garbage_gives_none_a_result_or_http_proxy_error(data: bytes) -> None:
    try:
        result = parse_connect_response(data)
    except HttpProxyError:
        return
    if result is not None:
        response, used = result
        assert 100 <= response.status <= 999
        assert 0 < used <= len(data)


@given(
    st.integers(100, 599), st.from_regex(r"[A-Za-z ]{0,30}", fullmatch=True), st.binary(max_size=50)
)
def test_any_status_round_trips(status: int, reason: str, tail: bytes) -> None:
    head = f"HTTP/1.1 {status} {reason}\r\nVia: test\r\n\r\n".encode()
    assert parse_connect_response(head + tail) == (
        ConnectResponse(status, reason.strip()),
        len(head),
    )
