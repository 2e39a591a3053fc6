"""SOCKS5 messages byte by byte: whole, one byte at a time, truncated, with trailing
bytes, and hypothesis garbage (which may only ever give None, a result or
SocksProtocolError)."""

from __future__ import annotations

import ast
import ipaddress
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_tproxy.outbound import http_proto, socks_proto
from trio_tproxy.outbound.socks_proto import (
    CMD_CONNECT,
    CMD_UDP_ASSOCIATE,
    Reply,
    SocksProtocolError,
    UdpDatagram,
    encode_address,
    encode_greeting,
    encode_request,
    encode_udp,
    encode_userpass,
    parse_address,
    parse_auth_status,
    parse_method_choice,
    parse_reply,
    parse_udp,
)

V4 = ipaddress.IPv4Address("192.0.2.7")
V6 = ipaddress.IPv6Address("2001:db8::1")


def test_greeting_bytes() -> None:
    assert encode_greeting([0]) == b"\x05\x01\x00"
    assert encode_greeting([0, 2]) == b"\x05\x02\x00\x02"
    with pytest.raises(ValueError):
        encode_greeting([])


def test_userpass_bytes() -> None:
    assert encode_userpass("alice", "s3cret") == b"\x01\x05alice\x06s3cret"
    assert encode_userpass("é", "p") == b"\x01\x02\xc3\xa9\x01p"  # UTF-8 length, not chars
    with pytest.raises(ValueError, match="1-255 bytes"):
        encode_userpass("", "p")
    with pytest.raises(ValueError, match="1-255 bytes"):
        encode_userpass("u", "x" * 256)
    assert len(encode_userpass("u" * 255, "p" * 255)) == 3 + 255 + 255


@pytest.mark.parametrize(
    ("host", "port", "wire"),
    [
        (V4, 443, b"\x01\xc0\x00\x02\x07\x01\xbb"),
        (V6, 53, b"\x04" + V6.packed + b"\x00\x35"),
        ("example.com", 80, b"\x03\x0bexample.com\x00\x50"),
        (ipaddress.IPv4Address(0), 0, b"\x01\x00\x00\x00\x00\x00\x00"),
    ],
)
def test_address_round_trip(host: socks_proto.Host, port: int, wire: bytes) -> None:
    assert encode_address(host, port) == wire
    assert parse_address(wire, 0) == (host, port, len(wire))
    assert parse_address(b"xx" + wire + b"tail", 2) == (host, port, 2 + len(wire))
    for cut in range(len(wire)):
        assert parse_address(wire[:cut], 0) is None


def test_address_limits() -> None:
    assert encode_address("a" * 255, 1)[:2] == b"\x03\xff"
    with pytest.raises(ValueError):
        encode_address("a" * 256, 1)
    with pytest.raises(ValueError):
        encode_address("", 1)
    with pytest.raises(ValueError):
        encode_address("bücher.example", 1)  # sniffed domains are punycode already
    with pytest.raises(ValueError):
        encode_address(V4, 65536)
    with pytest.raises(SocksProtocolError, match="unknown address type 2"):
        parse_address(b"\x02\x00\x00", 0)
    with pytest.raises(SocksProtocolError, match="empty domain"):
        parse_address(b"\x03\x00\x00\x50", 0)
    with pytest.raises(SocksProtocolError, match="non-ASCII"):
        parse_address(b"\x03\x01\xff\x00\x50", 0)


def test_request_bytes() -> None:
    assert encode_request(CMD_CONNECT, "example.com", 443) == (
        b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"
    )
    assert encode_request(CMD_CONNECT, V4, 80) == b"\x05\x01\x00\x01\xc0\x00\x02\x07\x00\x50"
    assert encode_request(CMD_UDP_ASSOCIATE, ipaddress.IPv4Address(0), 0) == (
        b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00"
    )


def feed_bytewise(parse: Callable[[bytes], object], wire: bytes) -> object:
    """Every strict prefix needs more; the whole message parses."""
    for cut in range(len(wire)):
        assert parse(wire[:cut]) is None, cut
    return parse(wire)


def test_method_choice_and_auth_status() -> None:
    assert feed_bytewise(parse_method_choice, b"\x05\x02") == (2, 2)
    assert parse_method_choice(b"\x05\xff\x99") == (0xFF, 2)  # trailing bytes left alone
    with pytest.raises(SocksProtocolError, match="not a SOCKS5 server"):
        parse_method_choice(b"HTTP/1.1 400")
    assert feed_bytewise(parse_auth_status, b"\x01\x00") == (0, 2)
    assert parse_auth_status(b"\x05\x01") == (1, 2)  # servers that echo version 5
    with pytest.raises(SocksProtocolError):
        parse_auth_status(b"\x02\x00")


@pytest.mark.parametrize(
    ("wire", "reply"),
    [
        (
            b"\x05\x00\x00\x01\x0a\x00\x00\x01\x04\x38",
            Reply(0, ipaddress.IPv4Address("10.0.0.1"), 1080),
        ),
        (b"\x05\x05\x00\x04" + V6.packed + b"\x00\x00", Reply(5, V6, 0)),
        (b"\x05\x00\x00\x03\x05relay\x10\x00", Reply(0, "relay", 4096)),
    ],
)
def test_reply(wire: bytes, reply: Reply) -> None:
    assert feed_bytewise(parse_reply, wire) == (reply, len(wire))
    # Tunnel data may follow the reply at once: it is not consumed.
    assert parse_reply(wire + b"SSH-2.0-banner") == (reply, len(wire))


def test_reply_texts_and_bad_replies() -> None:
    assert Reply(5, V4, 0).text == "connection refused"
    assert Reply(0, V4, 0).text == "succeeded"
    assert Reply(42, V4, 0).text == "unassigned code"
    with pytest.raises(SocksProtocolError, match="bad reply version 0x48"):
        parse_reply(b"H")  # judged on the first byte: a non-SOCKS peer fails fast
    with pytest.raises(SocksProtocolError, match="unknown address type 9"):
        parse_reply(b"\x05\x00\x00\x09\x00\x00\x00\x00\x00\x00")


def test_udp_datagram_bytes() -> None:
    wire = encode_udp("dns.example", 53, b"query")
    assert wire == b"\x00\x00\x00\x03\x0bdns.example\x00\x35query"
    assert parse_udp(wire) == UdpDatagram(0, "dns.example", 53, b"query")
    v4 = b"\x00\x00\x00\x01\xc0\x00\x02\x07\x00\x35"
    assert parse_udp(v4) == UdpDatagram(0, V4, 53, b"")
    assert parse_udp(b"\x00\x00\x01" + v4[3:] + b"frag") == UdpDatagram(1, V4, 53, b"frag")
    v6 = encode_udp(V6, 443, b"\x00" * 1200)
    assert parse_udp(v6) == UdpDatagram(0, V6, 443, b"\x00" * 1200)


@pytest.mark.parametrize(
    ("wire", "error"),
    [
        (b"", "truncated"),
        (b"\x00\x00\x00", "truncated"),
        (b"\x00\x00\x00\x01\x7f\x00", "truncated"),
        (b"\x00\x00\x00\x03\x05ab", "truncated"),
        (b"\x01\x00\x00\x01\x7f\x00\x00\x01\x00\x35", "reserved"),
        (b"\x00\x00\x00\x07\x7f\x00\x00\x01\x00\x35", "unknown address type"),
    ],
)
def test_udp_malformed(wire: bytes, error: str) -> None:
    with pytest.raises(SocksProtocolError, match=error):
        parse_udp(wire)


@given(st.binary(max_size=300))
def test_stream_parsers_never_raise_anything_else(data: bytes) -> None:
    for parse in (parse_method_choice, parse_auth_status, parse_reply):
        try:
            result = parse(data)
        except SocksProtocolError:
            continue
        if result is not None:
            _, used = result
            assert 0 < used <= len(data)


@given(st.binary(max_size=300))
def test_udp_parser_never_raises_anything_else(data: bytes) -> None:
    try:
        datagram = parse_udp(data)
    except SocksProtocolError:
        return
    assert 0 <= datagram.port <= 0xFFFF
    assert data.endswith(datagram.payload)


@given(
    st.one_of(
        st.ip_addresses(),
        st.from_regex(r"[a-z0-9][a-z0-9.-]{0,200}", fullmatch=True),
    ),
    st.integers(0, 0xFFFF),
    st.binary(max_size=100),
)
def test_udp_round_trip(host: socks_proto.Host, port: int, payload: bytes) -> None:
    assert parse_udp(encode_udp(host, port, payload)) == UdpDatagram(0, host, port, payload)


@pytest.mark.parametrize("module", [socks_proto, http_proto])
def test_protocol_modules_are_pure(module: object) -> None:
    source = Path(module.__file__).read_text()  # type: ignore[attr-defined]
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"trio", "socket", "ssl", "asyncio", "selectors"}
    # relative imports only of other pure modules
    relative = {
        n.module
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.ImportFrom) and n.level > 0
    }
    assert relative <= {"socks_proto", "addr"}  # addr: the pure address leaf
