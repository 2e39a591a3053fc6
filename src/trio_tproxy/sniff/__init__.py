"""Sans-IO protocol sniffers: bytes in, one of three outcomes out.

The session peeks at a flow's first bytes (TCP) or first datagrams (UDP) under a
deadline and calls :func:`sniff_stream` / :func:`sniff_datagrams` after every read
with everything received so far; it stops on ``Sniffed`` or ``NOT_THIS``, and on
``NEED_MORE`` reads on until the deadline (v2ray: 200 ms). The combinators never
return NEED_MORE once ``STREAM_MAX_PEEK`` bytes or ``MAX_DATAGRAMS`` datagrams
were given. Nothing here imports trio or socket; nothing here raises.

Protocol names (``Sniffed.protocol``): "http1", "tls", "quic", "bittorrent" (TCP
handshake, uTP and DHT alike) and "dns".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from . import bittorrent, http, quic, tls
from .bittorrent import sniff_bittorrent, sniff_dht, sniff_utp
from .dns import sniff_dns
from .http import sniff_http
from .outcome import NEED_MORE, NOT_THIS, NeedMore, NotThis, Sniffed, SniffOutcome, to_domain
from .quic import sniff_quic
from .tls import parse_client_hello, sniff_tls

__all__ = [
    "MAX_DATAGRAMS",
    "NEED_MORE",
    "NOT_THIS",
    "STREAM_MAX_PEEK",
    "NeedMore",
    "NotThis",
    "SniffOutcome",
    "Sniffed",
    "parse_client_hello",
    "sniff_bittorrent",
    "sniff_datagrams",
    "sniff_dht",
    "sniff_dns",
    "sniff_http",
    "sniff_quic",
    "sniff_stream",
    "sniff_tls",
    "sniff_utp",
    "to_domain",
]

# The most any TCP sniffer needs; past it sniff_stream() is final.
STREAM_MAX_PEEK: Final = max(tls.MAX_PEEK, http.MAX_PEEK, bittorrent.MAX_PEEK)
# The most datagrams sniff_datagrams() asks for (only QUIC ever needs a second one).
MAX_DATAGRAMS: Final = quic.MAX_DATAGRAMS

# Single-datagram sniffers, tried on the flow's first datagram after QUIC.
_DATAGRAM_SNIFFERS: Final = (sniff_dns, sniff_dht, sniff_utp)


def sniff_stream(data: bytes) -> SniffOutcome:
    """Sniff the start of a TCP stream with the HTTP, TLS and BitTorrent sniffers.

    Result of the first sniffer that recognises the stream; NEED_MORE if one needs
    more and the stream is shorter than STREAM_MAX_PEEK; else NOT_THIS. The first
    byte already tells which sniffer can succeed (0x16 a TLS handshake record, 0x13
    BitTorrent's pstrlen, a letter an HTTP method), and each of them says NOT_THIS
    to the others' first bytes, so only that one is asked: same outcome, a third of
    the work on the hot path.
    """
    if not data:
        return NEED_MORE
    first = data[0]
    if first == 0x16:
        outcome = sniff_tls(data)
    elif first == 0x13:
        outcome = sniff_bittorrent(data)
    else:
        outcome = sniff_http(data)
    if outcome is NEED_MORE and len(data) >= STREAM_MAX_PEEK:
        return NOT_THIS
    return outcome


def sniff_datagrams(datagrams: Sequence[bytes]) -> SniffOutcome:
    """Sniff the first datagrams of a UDP flow with the QUIC, DNS, DHT and uTP sniffers."""
    if not datagrams:
        return NEED_MORE
    quic_outcome = sniff_quic(datagrams)
    if isinstance(quic_outcome, Sniffed):
        return quic_outcome
    for sniffer in _DATAGRAM_SNIFFERS:
        outcome = sniffer(datagrams[0])
        if isinstance(outcome, Sniffed):
            return outcome
    return quic_outcome
