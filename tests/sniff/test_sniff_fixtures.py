"""Captured real-client fixtures: whole, byte by byte, truncated, with trailing garbage.

Truncation semantics (where we differ from v2ray, on purpose):

* TCP sniffers return NEED_MORE for *every* proper prefix of a valid message,
  including the empty one and prefixes shorter than a method name or a record
  header, where v2ray says NoClue. The session's deadline bounds the wait anyway,
  and NEED_MORE lets a ClientHello split over segments/records be completed.
* Some sniffers decide before the end: HTTP once the Host line is complete (the
  blank line need not have arrived), BitTorrent after the 20-byte protocol string.
  Once a prefix gives Sniffed, every longer prefix gives the same.
* A datagram is atomic, so a truncated datagram is a different datagram: DNS, uTP
  and DHT return NOT_THIS for it; QUIC fails the AEAD tag (NOT_THIS) unless only
  the zero padding after the last packet was cut. Fewer *datagrams* than the
  ClientHello needs give NEED_MORE.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from sniff_corpus import (
    DATAGRAMS,
    QUIC_FLOWS,
    STREAMS,
    load,
    load_flow,
)

from trio_tproxy.sniff import (
    MAX_DATAGRAMS,
    NEED_MORE,
    NOT_THIS,
    Sniffed,
    SniffOutcome,
    sniff_datagrams,
    sniff_quic,
    sniff_stream,
)
from trio_tproxy.sniff import tls as tls_module

GARBAGE = random.Random(1).randbytes(64) + b"\r\n\r\nHost: garbage.test\r\n\x16\x03\x01"


def test_every_fixture_file_is_listed() -> None:
    from sniff_corpus import FIXTURES

    listed = set(STREAMS) | set(DATAGRAMS) | set(QUIC_FLOWS)
    on_disk = {path.stem.rsplit("-", 1)[0] if path.stem.startswith("quic_") else path.stem
               for path in FIXTURES.glob("*.bin")}  # fmt: skip
    assert on_disk == listed


# -- TCP streams -----------------------------------------------------------------------


@pytest.mark.parametrize("name", STREAMS)
def test_stream_whole(name: str) -> None:
    sniffer, expected = STREAMS[name]
    data = load(name)
    assert sniffer(data) == expected
    assert sniff_stream(data) == expected


@pytest.mark.parametrize("name", STREAMS)
def test_stream_every_prefix(name: str) -> None:
    sniffer, expected = STREAMS[name]
    data = load(name)
    decided_at = None
    for end in range(len(data)):
        outcome = sniffer(data[:end])
        assert outcome in (NEED_MORE, expected), (end, outcome)
        assert sniff_stream(data[:end]) == outcome, end
        if outcome == expected and decided_at is None:
            decided_at = end
        if decided_at is not None:
            assert outcome == expected, f"undecided again at {end} after {decided_at}"
    if name.startswith("tls_"):
        # Nothing short of the whole ClientHello is enough for SNI and ALPN.
        assert decided_at is None


@pytest.mark.parametrize("name", STREAMS)
def test_stream_one_byte_at_a_time(name: str) -> None:
    """As the session does it: append what arrived, sniff, stop when decided."""
    _, expected = STREAMS[name]
    received = b""
    outcome: SniffOutcome = NEED_MORE
    for byte in load(name):
        received += bytes((byte,))
        outcome = sniff_stream(received)
        if outcome is not NEED_MORE:
            break
    assert outcome == expected


@pytest.mark.parametrize("name", STREAMS)
def test_stream_trailing_garbage(name: str) -> None:
    sniffer, expected = STREAMS[name]
    data = load(name) + GARBAGE
    assert sniffer(data) == expected
    assert sniff_stream(data) == expected


@pytest.mark.parametrize("fragment_len", [1, 7, 100, 512, 16384])
@pytest.mark.parametrize("name", ["tls_curl", "tls_chrome_pq", "tls_openssl_fragmented"])
def test_tls_any_record_fragmentation(name: str, fragment_len: int) -> None:
    """Re-frame the captured handshake message into records of ``fragment_len``."""
    _, expected = STREAMS[name]
    handshake = _handshake_bytes(load(name))
    records = b"".join(
        b"\x16\x03\x01" + len(chunk).to_bytes(2, "big") + chunk
        for chunk in (
            handshake[i : i + fragment_len] for i in range(0, len(handshake), fragment_len)
        )
    )
    assert len(records) <= tls_module.MAX_PEEK
    assert sniff_stream(records) == expected
    assert sniff_stream(records[:-1]) is NEED_MORE


def test_openssl_fixture_really_spans_records_and_segments() -> None:
    data = load("tls_openssl_fragmented")
    assert len(data) > 1500
    first_record_len = int.from_bytes(data[3:5], "big")
    assert first_record_len + 5 < len(data)


def test_pq_fixtures_are_post_quantum_sized() -> None:
    for name in ("tls_chrome_pq", "tls_firefox_pq"):
        assert len(load(name)) > 1500, name
        # X25519MLKEM768 (0x11ec) is offered.
        assert b"\x11\xec" in load(name)


def _handshake_bytes(stream: bytes) -> bytes:
    handshake = b""
    pos = 0
    while pos + 5 <= len(stream):
        length = int.from_bytes(stream[pos + 3 : pos + 5], "big")
        handshake += stream[pos + 5 : pos + 5 + length]
        pos += 5 + length
    return handshake[: 4 + int.from_bytes(handshake[1:4], "big")]


# -- QUIC flows --------------------------------------------------------------------------


@pytest.mark.parametrize("name", QUIC_FLOWS)
def test_quic_whole_flow(name: str) -> None:
    datagrams = load_flow(name)
    assert sniff_quic(datagrams) == QUIC_FLOWS[name]
    assert sniff_datagrams(datagrams) == QUIC_FLOWS[name]


@pytest.mark.parametrize("name", QUIC_FLOWS)
def test_quic_datagram_by_datagram(name: str) -> None:
    datagrams = load_flow(name)
    expected = QUIC_FLOWS[name]
    outcomes = [sniff_datagrams(datagrams[:count]) for count in range(len(datagrams) + 1)]
    assert outcomes[0] is NEED_MORE
    decided = outcomes.index(expected)
    assert all(outcome is NEED_MORE for outcome in outcomes[:decided])
    assert all(outcome == expected for outcome in outcomes[decided:])


@pytest.mark.parametrize("name", ["quic_aioquic_split", "quic_chrome"])
def test_quic_split_needs_several_datagrams_in_any_order(name: str) -> None:
    datagrams = load_flow(name)
    assert sniff_quic(datagrams[:1]) is NEED_MORE
    assert sniff_quic(datagrams[::-1]) == QUIC_FLOWS[name]


@pytest.mark.parametrize("name", QUIC_FLOWS)
def test_quic_truncated_datagram(name: str) -> None:
    first = load_flow(name)[0]
    packet_end = _first_packet_end(first)
    for end in range(len(first)):
        outcome = sniff_quic([first[:end]])
        if end < packet_end:
            assert outcome is NOT_THIS, end
        else:  # only zero padding after the packet was cut
            assert outcome == sniff_quic([first]), end


@pytest.mark.parametrize("name", QUIC_FLOWS)
def test_quic_trailing_garbage(name: str) -> None:
    datagrams = load_flow(name)
    garbled = [datagram + GARBAGE for datagram in datagrams]
    assert sniff_datagrams(garbled) == QUIC_FLOWS[name]


def test_quic_gives_up_waiting_after_max_datagrams() -> None:
    first = load_flow("quic_aioquic_split")[0]
    assert sniff_quic([first] * (MAX_DATAGRAMS - 1)) is NEED_MORE
    assert sniff_quic([first] * MAX_DATAGRAMS) == Sniffed("quic")


def _first_packet_end(datagram: bytes) -> int:
    from aioquic.buffer import Buffer
    from aioquic.quic.packet import pull_quic_header

    if datagram[1:5] == b"\xff\x00\x00\x1d":  # aioquic has no draft-29 any more
        datagram = datagram[:1] + b"\x00\x00\x00\x01" + datagram[5:]
    return pull_quic_header(Buffer(data=datagram)).packet_length


# -- single datagrams --------------------------------------------------------------------


@pytest.mark.parametrize("name", DATAGRAMS)
def test_datagram_whole(name: str) -> None:
    sniffer, expected = DATAGRAMS[name]
    datagram = load(name)
    assert sniffer(datagram) == expected
    assert sniff_datagrams([datagram]) == expected


@pytest.mark.parametrize("name", DATAGRAMS)
def test_datagram_truncated_is_not_this(name: str) -> None:
    """DNS reads only up to the end of the first question (its MAX_PEEK), so cutting
    the EDNS OPT record after it goes unnoticed; everything else must be whole."""
    sniffer, expected = DATAGRAMS[name]
    datagram = load(name)
    enough = _dns_question_end(datagram) if name.startswith("dns") else len(datagram)
    for end in range(len(datagram)):
        assert sniffer(datagram[:end]) == (expected if end >= enough else NOT_THIS), end


def _dns_question_end(datagram: bytes) -> int:
    return datagram.index(b"\x00", 12) + 1 + 4


@pytest.mark.parametrize("name", DATAGRAMS)
def test_datagram_trailing_garbage(name: str) -> None:
    """DNS ignores what follows the question (EDNS OPT and the like live there);
    uTP's SYN carries no payload and a KRPC message is exactly one dict."""
    sniffer, expected = DATAGRAMS[name]
    outcome = sniffer(load(name) + GARBAGE)
    assert outcome == (expected if name.startswith("dns") else NOT_THIS)


@pytest.mark.parametrize(
    ("sniffer", "names"),
    [
        (sniff_stream, [*DATAGRAMS, *QUIC_FLOWS]),
        (lambda data: sniff_datagrams([data]), list(STREAMS)),
    ],
)
def test_no_cross_claims(sniffer: Callable[[bytes], SniffOutcome], names: list[str]) -> None:
    """A stream fixture is no datagram protocol and vice versa."""
    for name in names:
        data = load_flow(name)[0] if name in QUIC_FLOWS else load(name)
        assert not isinstance(sniffer(data), Sniffed), name


@pytest.mark.parametrize("name", [*DATAGRAMS, *QUIC_FLOWS])
def test_each_datagram_claimed_by_one_sniffer_only(name: str) -> None:
    from sniff_corpus import DATAGRAM_SNIFFERS

    data = load_flow(name)[0] if name in QUIC_FLOWS else load(name)
    claims = [s.__name__ for s in DATAGRAM_SNIFFERS if isinstance(s(data), Sniffed)]
    claims += ["sniff_quic"] if isinstance(sniff_quic([data]), Sniffed) else []
    assert len(claims) <= 1, claims
