"""Trojan requests and UDP frames byte by byte; the stream decoder fed whole and per byte."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_tproxy.outbound.trojan_proto import (
    CMD_CONNECT,
    CMD_UDP_ASSOCIATE,
    TrojanProtocolError,
    UdpFrameDecoder,
    encode_request,
    encode_udp_frame,
    parse_udp_frame,
    password_hash,
)

V4 = ipaddress.IPv4Address("192.0.2.7")


def test_password_hash() -> None:
    h = password_hash("password")
    assert h == hashlib.sha224(b"password").hexdigest().encode()
    assert h == b"d63dc919e201d7bc4c825630d2cf25fdc93d4b2f0d46706d29038d01"
    assert len(h) == 56


def test_request_bytes() -> None:
    h = password_hash("pw")
    assert encode_request(h, CMD_CONNECT, "example.com", 443, b"GET") == (
        h + b"\r\n\x01\x03\x0bexample.com\x01\xbb\r\nGET"
    )
    assert encode_request(h, CMD_UDP_ASSOCIATE, V4, 53) == (
        h + b"\r\n\x03\x01\xc0\x00\x02\x07\x00\x35\r\n"
    )
    with pytest.raises(ValueError):
        encode_request(b"short", CMD_CONNECT, V4, 1)
    with pytest.raises(ValueError):
        encode_request(h, 2, V4, 1)


def test_udp_frame_bytes_and_need_more() -> None:
    wire = encode_udp_frame(V4, 53, b"query")
    assert wire == b"\x01\xc0\x00\x02\x07\x00\x35\x00\x05\r\nquery"
    assert parse_udp_frame(wire + b"next") == ((V4, 53, b"query"), len(wire))
    for cut in range(len(wire)):
        assert parse_udp_frame(wire[:cut]) is None
    with pytest.raises(ValueError):
        encode_udp_frame(V4, 53, b"x" * 0x10000)


def test_udp_frame_malformed() -> None:
    with pytest.raises(TrojanProtocolError, match="CRLF"):
        parse_udp_frame(b"\x01\xc0\x00\x02\x07\x00\x35\x00\x05XXquery")
    with pytest.raises(TrojanProtocolError, match="address type"):
        parse_udp_frame(b"\x09rest")


def test_decoder_whole_and_byte_by_byte() -> None:
    frames = [(V4, 53, b"a"), ("example.com", 443, b""), (V4, 1, b"x" * 2000)]
    wire = b"".join(encode_udp_frame(*f) for f in frames)
    assert UdpFrameDecoder().feed(wire) == frames
    decoder = UdpFrameDecoder()
    got = []
    for i in range(len(wire)):
        got += decoder.feed(wire[i : i + 1])
    assert got == frames


@given(st.lists(st.binary(max_size=50), max_size=5))
def test_decoder_garbage(pieces: list[bytes]) -> None:
    decoder = UdpFrameDecoder()
    try:
        for piece in pieces:
            for _, port, _ in decoder.feed(piece):
                assert 0 <= port <= 0xFFFF
    except TrojanProtocolError:
        pass


@given(st.ip_addresses(), st.integers(0, 0xFFFF), st.binary(max_size=300))
def test_frame_round_trip(host: ipaddress.IPv4Address, port: int, payload: bytes) -> None:
    assert UdpFrameDecoder().feed(encode_udp_frame(host, port, payload)) == [(host, port, payload)]
