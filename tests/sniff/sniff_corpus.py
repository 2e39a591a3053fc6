"""The captured fixtures and what each must sniff as (see fixtures/capture.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from trio_tproxy.sniff import (
    NEED_MORE,
    NOT_THIS,
    NeedMore,
    NotThis,
    Sniffed,
    SniffOutcome,
    sniff_bittorrent,
    sniff_datagrams,
    sniff_dht,
    sniff_dns,
    sniff_http,
    sniff_quic,
    sniff_stream,
    sniff_tls,
    sniff_utp,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures"

OUTCOME_TYPES = (Sniffed, NeedMore, NotThis)

OPENSSL_ALPN = ("h2", "http/1.1", *(f"x-proto-{i:03d}-padding-padding" for i in range(60)))
AIOQUIC_SPLIT_ALPN = ("h3", "h3-29", *(f"x-proto-{i:03d}-padding-padding" for i in range(40)))

# name -> (the protocol's own sniffer, expected outcome of the whole stream)
STREAMS: dict[str, tuple[Callable[[bytes], SniffOutcome], Sniffed]] = {
    "http_curl": (sniff_http, Sniffed("http1", "example.test")),
    "tls_curl": (sniff_tls, Sniffed("tls", "example.test", ("h2", "http/1.1"))),
    "tls_chrome_pq": (sniff_tls, Sniffed("tls", "example.test", ("h2", "http/1.1"))),
    "tls_firefox_pq": (sniff_tls, Sniffed("tls", "example.test", ("h2", "http/1.1"))),
    "tls_openssl_fragmented": (
        sniff_tls,
        Sniffed("tls", "fragmented.example.test", OPENSSL_ALPN),
    ),
    "bittorrent_libtorrent": (sniff_bittorrent, Sniffed("bittorrent")),
}

# name -> expected outcome of the flow's datagrams (QUIC: NAME-N.bin)
QUIC_FLOWS: dict[str, Sniffed] = {
    "quic_aioquic_v1": Sniffed("quic", "example.test", ("h3",)),
    "quic_aioquic_v2": Sniffed("quic", "example.test", ("h3",)),
    "quic_draft29": Sniffed("quic", "example.test", ("h3-29",)),
    "quic_aioquic_split": Sniffed("quic", "example.test", AIOQUIC_SPLIT_ALPN),
    "quic_chrome": Sniffed("quic", "example.test", ("h3",)),
}

# name -> (the protocol's own single-datagram sniffer, expected outcome)
DATAGRAMS: dict[str, tuple[Callable[[bytes], SniffOutcome], Sniffed]] = {
    "dns_dig": (sniff_dns, Sniffed("dns", "www.example.com")),
    "utp_libtorrent_syn": (sniff_utp, Sniffed("bittorrent")),
    "dht_libtorrent_query": (sniff_dht, Sniffed("bittorrent")),
    "dht_bep5_ping": (sniff_dht, Sniffed("bittorrent")),
    "dht_bep5_get_peers_response": (sniff_dht, Sniffed("bittorrent")),
}

STREAM_SNIFFERS: tuple[Callable[[bytes], SniffOutcome], ...] = (
    sniff_http,
    sniff_tls,
    sniff_bittorrent,
    sniff_stream,
)
DATAGRAM_SNIFFERS: tuple[Callable[[bytes], SniffOutcome], ...] = (
    sniff_dns,
    sniff_utp,
    sniff_dht,
)
FLOW_SNIFFERS: tuple[Callable[[Sequence[bytes]], SniffOutcome], ...] = (
    sniff_quic,
    sniff_datagrams,
)


def load(name: str) -> bytes:
    return (FIXTURES / f"{name}.bin").read_bytes()


def load_flow(name: str) -> list[bytes]:
    paths = sorted(FIXTURES.glob(f"{name}-*.bin"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    assert paths, f"no datagrams for {name}"
    return [path.read_bytes() for path in paths]


def all_payloads() -> list[bytes]:
    """Every fixture's bytes, streams and datagrams alike (for mutation)."""
    payloads = [load(name) for name in (*STREAMS, *DATAGRAMS)]
    for name in QUIC_FLOWS:
        payloads.extend(load_flow(name))
    return payloads


def is_outcome(value: object) -> bool:
    return isinstance(value, OUTCOME_TYPES) and (
        not isinstance(value, NeedMore | NotThis) or value in (NEED_MORE, NOT_THIS)
    )
