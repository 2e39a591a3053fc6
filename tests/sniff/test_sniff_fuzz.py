"""Hypothesis: random and mutated input into every sniffer never raises, and only
ever gives one of the three outcomes (with a normalised domain when Sniffed)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sniff_corpus import (
    DATAGRAM_SNIFFERS,
    FLOW_SNIFFERS,
    QUIC_FLOWS,
    STREAM_SNIFFERS,
    STREAMS,
    all_payloads,
    is_outcome,
    load,
    load_flow,
)

from trio_tproxy.sniff import (
    NEED_MORE,
    NOT_THIS,
    STREAM_MAX_PEEK,
    Sniffed,
    SniffOutcome,
    parse_client_hello,
    quic,
    sniff_bittorrent,
    sniff_dns,
    sniff_http,
    sniff_stream,
    sniff_tls,
    to_domain,
)
from trio_tproxy.sniff import dns as dns_module
from trio_tproxy.sniff import http as http_module
from trio_tproxy.sniff import tls as tls_module
from trio_tproxy.sniff.quic_initial import initial_payloads

FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROTOCOLS = {"http1", "tls", "quic", "bittorrent", "dns"}
PAYLOADS = all_payloads()


def check(outcome: SniffOutcome) -> None:
    assert is_outcome(outcome), outcome
    if isinstance(outcome, Sniffed):
        assert outcome.protocol in PROTOCOLS
        assert outcome.domain is None or to_domain(outcome.domain) == outcome.domain
        assert isinstance(outcome.alpn, tuple)
        assert all(isinstance(name, str) for name in outcome.alpn)


@st.composite
def mutated(draw: st.DrawFn, payloads: Sequence[bytes] = PAYLOADS) -> bytes:
    """A fixture with a few bytes flipped, inserted, deleted, or cut off."""
    data = bytearray(draw(st.sampled_from(payloads)))
    for _ in range(draw(st.integers(1, 6))):
        position = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(("flip", "set", "insert", "delete", "cut")))
        if operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif not data or position == len(data):
            continue
        elif operation == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set":
            data[position] = draw(st.sampled_from((0x00, 0x0A, 0x0D, 0x20, 0x3A, 0x80, 0xFF)))
        elif operation == "delete":
            del data[position : position + draw(st.integers(1, 8))]
        else:
            del data[position:]
    return bytes(data)


def run_all(data: bytes) -> None:
    for stream_sniffer in STREAM_SNIFFERS:
        check(stream_sniffer(data))
    for datagram_sniffer in DATAGRAM_SNIFFERS:
        check(datagram_sniffer(data))
    for flow_sniffer in FLOW_SNIFFERS:
        check(flow_sniffer([data]))


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    run_all(data)


@FUZZ
@given(st.binary(max_size=64).map(lambda tail: b"GET / HTTP/1.1\r\nHost:" + tail))
def test_random_http_tails(data: bytes) -> None:
    check(sniff_http(data))


@FUZZ
@given(mutated())
def test_mutated_fixtures(data: bytes) -> None:
    run_all(data)


@FUZZ
@given(st.lists(st.one_of(mutated(), st.binary(max_size=1300)), max_size=10))
def test_datagram_flows(datagrams: list[bytes]) -> None:
    for flow_sniffer in FLOW_SNIFFERS:
        check(flow_sniffer(datagrams))


def _decrypted_quic_payloads() -> list[bytes]:
    payloads = []
    for name in QUIC_FLOWS:
        for datagram in load_flow(name):
            payloads.extend(p for p in initial_payloads(datagram) if p is not None)
    return payloads


QUIC_PLAINTEXTS = _decrypted_quic_payloads()


@FUZZ
@given(st.lists(mutated(QUIC_PLAINTEXTS), min_size=1, max_size=4))
def test_mutated_quic_plaintext(plaintexts: list[bytes]) -> None:
    """Behind the AEAD: the frame walker and CRYPTO reassembly on mutated frames."""
    crypto: dict[int, bytes] = {}
    for plaintext in plaintexts:
        quic._collect_crypto(plaintext, crypto)
    check(quic._client_hello(crypto))


def _client_hello_bodies() -> list[bytes]:
    from sniff_corpus import STREAMS, load

    bodies = []
    for name in STREAMS:
        if name.startswith("tls_"):
            from test_sniff_fixtures import _handshake_bytes

            bodies.append(_handshake_bytes(load(name))[4:])
    return bodies


@FUZZ
@given(mutated(_client_hello_bodies()))
def test_mutated_client_hello_bodies(body: bytes) -> None:
    check(parse_client_hello(body))
    check(parse_client_hello(body, "quic"))


SNIFFERS_WITH_PEEK: list[tuple[Callable[[bytes], SniffOutcome], int]] = [
    (sniff_http, http_module.MAX_PEEK),
    (sniff_tls, tls_module.MAX_PEEK),
    (sniff_dns, dns_module.MAX_PEEK),
]


@settings(max_examples=50, deadline=None)
@given(mutated(), st.binary(min_size=1, max_size=64), st.integers(0, 2))
def test_nothing_beyond_max_peek_matters(data: bytes, tail: bytes, which: int) -> None:
    sniffer, max_peek = SNIFFERS_WITH_PEEK[which]
    data = data or b"G"
    padded = (data * (max_peek // len(data) + 1))[:max_peek]
    assert len(padded) == max_peek
    assert sniffer(padded + tail) == sniffer(padded)


# -- fast paths agree with the straightforward definitions ------------------------------------


def reference_sniff_stream(data: bytes) -> SniffOutcome:
    """The combinator as the contract states it: ask every TCP sniffer."""
    outcomes = [sniffer(data) for sniffer in (sniff_http, sniff_tls, sniff_bittorrent)]
    for outcome in outcomes:
        if isinstance(outcome, Sniffed):
            return outcome
    if NEED_MORE in outcomes and len(data) < STREAM_MAX_PEEK:
        return NEED_MORE
    return NOT_THIS


STREAM_PAYLOADS = [load(name) for name in STREAMS]


@FUZZ
@given(st.one_of(mutated(STREAM_PAYLOADS), st.binary(max_size=64)))
def test_sniff_stream_dispatch_matches_the_contract(data: bytes) -> None:
    assert sniff_stream(data) == reference_sniff_stream(data)


HTTP_REQUESTS = [
    load("http_curl"),
    b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n",
    b"post /x HTTP/1.0\nAccept: */*\nHOST:b.example:80\n\n",
    b"OPTIONS * HTTP/1.1\r\nX: y\r\n\r\nHost: c.example\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1]:80\r\nHost: b.example\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost:\ta.example :80 \r\n\r\n",
    b"GET / HTTP/1.1\r\nX: 1\r\nHOST: A.Example.:8080\t\r\nHost: z\r\n\r\n",
]


@FUZZ
@given(mutated(HTTP_REQUESTS))
def test_http_fast_path_matches_step_by_step(data: bytes) -> None:
    assert sniff_http(data) == http_module._sniff_step_by_step(data[: http_module.MAX_PEEK])


@FUZZ
@given(mutated([load("tls_curl"), load("tls_chrome_pq")]))
def test_tls_fast_path_matches_reassembly(data: bytes) -> None:
    assert sniff_tls(data) == tls_module._reassemble_and_parse(data[: tls_module.MAX_PEEK])
