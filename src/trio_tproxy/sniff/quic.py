"""QUIC sniffer: SNI and ALPN from a client's Initial packets.

The first datagram of the flow must start with a client Initial of a supported
version (v1, v2, draft-29) that decrypts with the keys derived from its DCID;
otherwise NOT_THIS. The ClientHello is the start of the Initial CRYPTO stream,
which may be spread over several Initial packets, coalesced in one datagram or sent
in several (Chrome with a post-quantum key share needs two), with frames in any
order (Chrome's "chaos protection" shuffles CRYPTO, PING and PADDING frames). So
CRYPTO frames of all Initials seen so far are reassembled by offset, and the
ClientHello is parsed by the TLS sniffer's :func:`parse_client_hello`.

Outcomes: ClientHello complete -> ``Sniffed("quic", sni, alpn)``; a decryptable
Initial but ClientHello incomplete -> NEED_MORE, until ``MAX_DATAGRAMS`` datagrams
or ``MAX_PEEK`` bytes were looked at, then ``Sniffed("quic")`` without a domain (the
AEAD tag already proved this is QUIC). Xray gives up with "need more data" when
the ClientHello spans several Initials; here it is simply waited for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from .outcome import NEED_MORE, NOT_THIS, Sniffed, SniffOutcome
from .quic_initial import initial_payloads, read_varint
from .tls import (
    HANDSHAKE_HEADER_LEN,
    HANDSHAKE_TYPE_CLIENT_HELLO,
    MAX_CLIENT_HELLO,
    parse_client_hello,
)

__all__ = ["MAX_DATAGRAMS", "MAX_PEEK", "PROTOCOL", "sniff_quic"]

PROTOCOL: Final = "quic"

# A ClientHello with hybrid post-quantum shares and a resumption ticket fills 2-3
# Initials; 8 datagrams leave room for 0-RTT datagrams sent in between.
MAX_DATAGRAMS: Final = 8
# Bytes looked at over all datagrams: client Initial datagrams are 1200..1500 bytes
# (RFC 9000 §14.1 pads them to >= 1200), so 8 of them fit with room to spare.
MAX_PEEK: Final = 16384
# The CRYPTO stream beyond the ClientHello's maximum size is never needed.
MAX_CRYPTO_OFFSET: Final = HANDSHAKE_HEADER_LEN + MAX_CLIENT_HELLO

FRAME_PADDING: Final = 0x00
FRAME_PING: Final = 0x01
FRAME_ACK: Final = 0x02
FRAME_ACK_ECN: Final = 0x03
FRAME_CRYPTO: Final = 0x06
FRAME_CONNECTION_CLOSE: Final = 0x1C

_ZEROS_64: Final = bytes(64)
_ZEROS_8: Final = bytes(8)


def sniff_quic(datagrams: Sequence[bytes]) -> SniffOutcome:
    """Sniff the ClientHello from the first datagrams of a UDP flow, in arrival order."""
    if not datagrams:
        return NEED_MORE
    crypto: dict[int, bytes] = {}
    budget = MAX_PEEK
    count = 0
    for datagram in datagrams[:MAX_DATAGRAMS]:
        if budget <= 0:
            break
        count += 1
        chunk = datagram[:budget]
        budget -= len(chunk)
        opened_any = False
        for payload in initial_payloads(chunk):
            if payload is None:
                break
            opened_any = True
            _collect_crypto(payload, crypto)
        if count == 1 and not opened_any:
            return NOT_THIS
    outcome = _client_hello(crypto)
    if outcome is not NEED_MORE:
        return outcome
    if count >= MAX_DATAGRAMS or budget <= 0:
        return Sniffed(PROTOCOL)
    return NEED_MORE


def _collect_crypto(payload: bytes, crypto: dict[int, bytes]) -> None:
    """Add the CRYPTO frames of one decrypted Initial to ``crypto`` (offset -> data).

    A client Initial may carry only PADDING, PING, ACK, CRYPTO and CONNECTION_CLOSE
    (RFC 9000 §12.4, Table 3); anything else ends the walk over this packet.
    """
    try:
        _walk_frames(payload, crypto)
    except IndexError:  # a frame cut short by the end of the packet
        return


def _walk_frames(payload: bytes, crypto: dict[int, bytes]) -> None:
    # Chrome's chaos protection splits the ClientHello into dozens of small CRYPTO
    # frames between PINGs and PADDING runs, so the 1- and 2-byte varints of CRYPTO
    # offsets and lengths are decoded inline (a call per varint doubled the cost).
    pos = 0
    end = len(payload)
    while pos < end:
        frame_type = payload[pos]
        if frame_type == FRAME_CRYPTO:
            lead = payload[pos + 1]
            if lead < 0x40:
                offset, pos = lead, pos + 2
            elif lead < 0x80:
                offset, pos = (lead & 0x3F) << 8 | payload[pos + 2], pos + 3
            else:
                offset, pos = read_varint(payload, pos + 1)
            lead = payload[pos]
            if lead < 0x40:
                length, pos = lead, pos + 1
            elif lead < 0x80:
                length, pos = (lead & 0x3F) << 8 | payload[pos + 1], pos + 2
            else:
                length, pos = read_varint(payload, pos)
            if offset < 0 or length < 0 or pos + length > end:
                return
            if (
                length
                and offset + length <= MAX_CRYPTO_OFFSET
                and len(crypto.get(offset, b"")) < length
            ):
                crypto[offset] = payload[pos : pos + length]
            pos += length
        elif frame_type == FRAME_PADDING:
            pos = _skip_padding(payload, pos)
        elif frame_type == FRAME_PING:
            pos += 1
        elif frame_type in (FRAME_ACK, FRAME_ACK_ECN):
            pos = _skip_ack(payload, pos + 1, ecn=frame_type == FRAME_ACK_ECN)
        elif frame_type == FRAME_CONNECTION_CLOSE:
            pos = _skip_connection_close(payload, pos + 1)
        else:
            return
        if pos < 0:
            return


def _skip_padding(payload: bytes, pos: int) -> int:
    """Position after a run of PADDING (zero) bytes.

    Runs are long (the rest of a 1200-byte datagram) and Chrome scatters several
    per packet; a per-byte loop or a regex scan costs 4..8 ns a byte here, while
    bytes.count and startswith (memcmp) do 64 bytes in one call.
    """
    end = len(payload)
    pos += 1
    if pos == end or payload[pos]:
        return pos  # a single byte: Chrome's commonest run between frames
    if payload.count(0, pos) == end - pos:
        return end
    while payload.startswith(_ZEROS_64, pos):
        pos += 64
    while payload.startswith(_ZEROS_8, pos):
        pos += 8
    while payload[pos] == 0:  # a non-zero byte follows: count() said so
        pos += 1
    return pos


def _skip_ack(payload: bytes, pos: int, *, ecn: bool) -> int:
    """Position after an ACK frame body (RFC 9000 §19.3), -1 if malformed."""
    largest, pos = read_varint(payload, pos)
    delay, pos = read_varint(payload, pos)
    range_count, pos = read_varint(payload, pos)
    first_range, pos = read_varint(payload, pos)
    if min(largest, delay, range_count, first_range) < 0 or range_count > len(payload):
        return -1
    for _ in range(2 * range_count + (3 if ecn else 0)):
        value, pos = read_varint(payload, pos)
        if value < 0:
            return -1
    return pos


def _skip_connection_close(payload: bytes, pos: int) -> int:
    """Position after a transport CONNECTION_CLOSE body (RFC 9000 §19.19), -1 if malformed."""
    error_code, pos = read_varint(payload, pos)
    frame_type, pos = read_varint(payload, pos)
    reason_len, pos = read_varint(payload, pos)
    if min(error_code, frame_type, reason_len) < 0 or pos + reason_len > len(payload):
        return -1
    return pos + reason_len


def _client_hello(crypto: dict[int, bytes]) -> SniffOutcome:
    """Parse the ClientHello from the contiguous start of the CRYPTO stream."""
    stream = _contiguous_prefix(crypto)
    if len(stream) < HANDSHAKE_HEADER_LEN:
        return NEED_MORE
    if stream[0] != HANDSHAKE_TYPE_CLIENT_HELLO:
        return Sniffed(PROTOCOL)
    message_len = int.from_bytes(stream[1:4], "big")
    if message_len > MAX_CLIENT_HELLO:
        return Sniffed(PROTOCOL)
    if len(stream) < HANDSHAKE_HEADER_LEN + message_len:
        return NEED_MORE
    body = stream[HANDSHAKE_HEADER_LEN : HANDSHAKE_HEADER_LEN + message_len]
    parsed = parse_client_hello(body, PROTOCOL)
    # The AEAD tag proved this is QUIC even if the ClientHello does not parse.
    return parsed if isinstance(parsed, Sniffed) else Sniffed(PROTOCOL)


def _contiguous_prefix(crypto: dict[int, bytes]) -> bytes:
    if len(crypto) == 1:
        return crypto.get(0, b"")
    parts: list[bytes] = []
    have = 0
    for offset in sorted(crypto):
        if offset > have:
            break
        data = crypto[offset]
        if offset + len(data) > have:
            parts.append(data[have - offset :])
            have = offset + len(data)
    return b"".join(parts)
