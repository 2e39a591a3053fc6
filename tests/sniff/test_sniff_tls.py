"""TLS ClientHello sniffing on hand-built messages (the fixtures cover real clients)."""

from __future__ import annotations

import ssl

import pytest

from trio_tproxy.sniff import NEED_MORE, NOT_THIS, Sniffed, parse_client_hello, sniff_tls
from trio_tproxy.sniff.tls import MAX_CLIENT_HELLO, MAX_PEEK


def u16(value: int) -> bytes:
    return value.to_bytes(2, "big")


def extension(ext_type: int, body: bytes) -> bytes:
    return u16(ext_type) + u16(len(body)) + body


def sni(*names: bytes, name_type: int = 0) -> bytes:
    entries = b"".join(bytes((name_type,)) + u16(len(n)) + n for n in names)
    return extension(0, u16(len(entries)) + entries)


def alpn(*protocols: bytes) -> bytes:
    entries = b"".join(bytes((len(p),)) + p for p in protocols)
    return extension(16, u16(len(entries)) + entries)


def client_hello_body(*extensions: bytes, with_extensions: bool = True) -> bytes:
    body = (
        b"\x03\x03" + bytes(32) + b"\x20" + bytes(32) + u16(4) + b"\x13\x01\x13\x02" + b"\x01\x00"
    )
    if with_extensions:
        joined = b"".join(extensions)
        body += u16(len(joined)) + joined
    return body


def handshake(body: bytes) -> bytes:
    return b"\x01" + len(body).to_bytes(3, "big") + body


def record(payload: bytes, content_type: int = 0x16, version: bytes = b"\x03\x01") -> bytes:
    return bytes((content_type,)) + version + u16(len(payload)) + payload


GREASE_EXT = extension(0x0A0A, b"")
GREASE_EXT_2 = extension(0xFAFA, b"\x00")


@pytest.mark.parametrize(
    ("extensions", "expected"),
    [
        ((sni(b"example.com"),), Sniffed("tls", "example.com")),
        ((sni(b"Example.COM."),), Sniffed("tls", "example.com")),
        (
            (GREASE_EXT, sni(b"a.example"), GREASE_EXT_2, alpn(b"h2")),
            Sniffed("tls", "a.example", ("h2",)),
        ),
        (
            (alpn(b"\x1a\x1a", b"h2", b"http/1.1"), sni(b"a.example")),
            Sniffed("tls", "a.example", ("h2", "http/1.1")),
        ),  # GREASE ALPN dropped
        (
            (extension(0xFE0D, bytes(200)), sni(b"public.example")),  # ECH: outer SNI
            Sniffed("tls", "public.example"),
        ),
        ((extension(0x11EC, bytes(1216)), sni(b"pq.example")), Sniffed("tls", "pq.example")),
        ((sni(b"192.0.2.1"),), Sniffed("tls", None)),
        ((sni(b"under_score.example"),), Sniffed("tls", None)),
        ((sni(b"x", name_type=1),), Sniffed("tls", None)),  # not host_name
        ((sni(b"first.example"), sni(b"second.example")), Sniffed("tls", "first.example")),
        ((extension(0, b"\x00\x05\x00\x00"),), Sniffed("tls", None)),  # malformed SNI
        ((alpn(b"h2")[:-1] + b"\x00" + b"x",), NOT_THIS),  # extension length mismatch
        ((extension(16, b"\x00\x03\x00h2"),), Sniffed("tls", None)),  # malformed ALPN
        ((alpn(b"h\xffx"),), Sniffed("tls", None, ("h\\xffx",))),
        ((), Sniffed("tls")),  # empty extension block
    ],
)
def test_parse_client_hello(extensions: tuple[bytes, ...], expected: object) -> None:
    body = client_hello_body(*extensions)
    assert parse_client_hello(body) == expected
    assert sniff_tls(record(handshake(body))) == expected


def test_client_hello_without_extensions() -> None:
    body = client_hello_body(with_extensions=False)
    assert parse_client_hello(body) == Sniffed("tls")
    assert parse_client_hello(body, "quic") == Sniffed("quic")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        bytes(40),
        b"\x02\x00" + client_hello_body(sni(b"a.example"))[2:],  # SSL 2 legacy_version
        client_hello_body(sni(b"a.example")) + b"\x00",  # trailing byte
        client_hello_body(sni(b"a.example"))[:-1],
        client_hello_body()[:34] + b"\x21" + bytes(60),  # session id too long
        client_hello_body()[:67] + u16(3) + b"\x13\x01\x13" + b"\x01\x00",  # odd suites
        client_hello_body()[:67] + u16(2) + b"\x13\x01" + b"\x00" + u16(0),  # no compression
    ],
)
def test_malformed_client_hello(body: bytes) -> None:
    assert parse_client_hello(body) is NOT_THIS


def test_records_and_handshake_header() -> None:
    hello = handshake(client_hello_body(sni(b"a.example")))
    assert sniff_tls(record(hello)) == Sniffed("tls", "a.example")
    assert sniff_tls(record(hello, version=b"\x03\x03")) == Sniffed("tls", "a.example")
    assert sniff_tls(record(hello, version=b"\x03\x05")) is NOT_THIS
    assert sniff_tls(record(hello, version=b"\x02\x00")) is NOT_THIS
    assert sniff_tls(record(hello, content_type=0x17)) is NOT_THIS
    assert sniff_tls(record(b"\x02" + hello[1:])) is NOT_THIS  # ServerHello
    assert sniff_tls(record(b"\x01\x00\x00\x10" + bytes(16))) is NOT_THIS  # too short
    huge = b"\x01" + (MAX_CLIENT_HELLO + 1).to_bytes(3, "big")
    assert sniff_tls(record(huge)) is NOT_THIS
    assert sniff_tls(b"\x16\x03\x01\x00\x00") is NOT_THIS  # empty record
    assert sniff_tls(b"\x16\x03\x01\x40\x01") is NOT_THIS  # record > 2^14
    assert sniff_tls(b"\x80\x2e\x01\x03\x01") is NOT_THIS  # SSLv2-framed hello


def test_non_handshake_record_before_hello_is_complete() -> None:
    hello = handshake(client_hello_body(sni(b"a.example")))
    stream = record(hello[:10]) + record(b"\x01", content_type=0x14) + record(hello[10:])
    assert sniff_tls(stream) is NOT_THIS


def test_data_after_hello_is_ignored() -> None:
    hello = handshake(client_hello_body(sni(b"a.example")))
    change_cipher_spec = record(b"\x01", content_type=0x14, version=b"\x03\x03")
    assert sniff_tls(record(hello) + change_cipher_spec + b"early") == Sniffed("tls", "a.example")


@pytest.mark.parametrize(
    "prefix",
    [
        b"",
        b"\x16",
        b"\x16\x03",
        b"\x16\x03\x01",
        b"\x16\x03\x01\x02",
        b"\x16\x03\x01\x02\x00",
        b"\x16\x03\x01\x02\x00\x01",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc",
    ],
)
def test_valid_prefixes_need_more(prefix: bytes) -> None:
    assert sniff_tls(prefix) is NEED_MORE


@pytest.mark.parametrize("prefix", [b"\x17", b"\x16\x02", b"\x16\x03\x07", b"\x16\x03\x01\x41"])
def test_invalid_prefixes(prefix: bytes) -> None:
    assert sniff_tls(prefix) is NOT_THIS


def test_gives_up_at_max_peek() -> None:
    """A hello claimed at MAX_CLIENT_HELLO, sent in 1-byte records, never completes."""
    header = b"\x01" + MAX_CLIENT_HELLO.to_bytes(3, "big")
    stream = b"".join(record(bytes((b,))) for b in header + bytes(MAX_PEEK))
    assert sniff_tls(stream[: MAX_PEEK - 1]) is NEED_MORE
    assert sniff_tls(stream) is NOT_THIS


def test_python_ssl_client_hello() -> None:
    """The stdlib's OpenSSL, driven through a memory BIO: no socket needed."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="Stdlib.Example.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert sniff_tls(hello) == Sniffed("tls", "stdlib.example.test", ("h2", "http/1.1"))
