"""TLS ClientHello sniffer: SNI and ALPN from the first bytes of a TCP stream.

v2ray (``common/protocol/tls/sniff.go``) insists the whole ClientHello sits in the
first record and gives up otherwise. Real clients do not always oblige: a client
with a small ``max_fragment_length`` or OpenSSL's ``max_send_fragment`` splits the
handshake message over several records, and hybrid post-quantum key shares
(X25519MLKEM768 adds 1216 bytes) push the ClientHello past one TCP segment. So the
handshake message is reassembled from consecutive handshake records here, and the
caller simply passes all bytes received so far.

:func:`parse_client_hello` takes the handshake *body* (after the 4-byte handshake
header) and is shared with the QUIC sniffer, whose CRYPTO stream carries the same
message without TLS records.

A ClientHello without SNI still gives ``Sniffed("tls")`` (domain ``None``): the
protocol is known, and routing may use it.
"""

from __future__ import annotations

import functools
import struct
from typing import Final

from .outcome import NEED_MORE, NOT_THIS, NotThis, Sniffed, SniffOutcome, to_domain

__all__ = ["MAX_CLIENT_HELLO", "MAX_PEEK", "PROTOCOL", "parse_client_hello", "sniff_tls"]

PROTOCOL: Final = "tls"

RECORD_HEADER_LEN: Final = 5
HANDSHAKE_HEADER_LEN: Final = 4
CONTENT_TYPE_HANDSHAKE: Final = 0x16
HANDSHAKE_TYPE_CLIENT_HELLO: Final = 1
EXTENSION_SERVER_NAME: Final = 0
EXTENSION_ALPN: Final = 16
SERVER_NAME_TYPE_HOST_NAME: Final = 0

# RFC 8446 §5.1: a record carries at most 2^14 bytes of plaintext.
MAX_RECORD_LEN: Final = 16384
# A ClientHello larger than one maximal record is not sniffed. Real ones are far
# smaller: ~500 bytes classic, ~1.8 KB with X25519MLKEM768, ~3 KB with two hybrid
# shares and a session ticket. The bound also caps QUIC CRYPTO reassembly.
MAX_CLIENT_HELLO: Final = 16384
# Enough for a MAX_CLIENT_HELLO fragmented into records of 8+ bytes each (5-byte
# record header per fragment); also v2ray's sniff buffer (32767) rounded up.
MAX_PEEK: Final = 32768
# legacy_version, random, empty session_id, one cipher suite, one compression method.
MIN_CLIENT_HELLO: Final = 2 + 32 + 1 + 2 + 2 + 1 + 1

# _message_len() results besides a length.
_UNKNOWN: Final = -1
_INVALID: Final = -2

_U16: Final = struct.Struct(">H")
_U16_PAIR: Final = struct.Struct(">HH")
_RECORD_HEADER: Final = struct.Struct(">BBBH")
_SNI_SINGLE: Final = struct.Struct(">HBH")


def sniff_tls(data: bytes) -> SniffOutcome:
    """Sniff a ClientHello from the start of a TCP stream (records in order)."""
    if len(data) > MAX_PEEK:
        data = data[:MAX_PEEK]
    # Fast path, same result as the loop below: the whole ClientHello in one record.
    if len(data) >= RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN and data[5] == 1:
        content_type, major, minor, record_len = _RECORD_HEADER.unpack_from(data)
        message_len = int.from_bytes(data[6:9], "big")
        if (
            content_type == CONTENT_TYPE_HANDSHAKE
            and major == 3
            and minor <= 4
            and MIN_CLIENT_HELLO <= message_len <= MAX_CLIENT_HELLO
            and HANDSHAKE_HEADER_LEN + message_len <= record_len <= MAX_RECORD_LEN
            and len(data) >= RECORD_HEADER_LEN + HANDSHAKE_HEADER_LEN + message_len
        ):
            return parse_client_hello(data[9 : 9 + message_len])
    return _reassemble_and_parse(data)


def _reassemble_and_parse(data: bytes) -> SniffOutcome:
    """Walk handshake records, joining fragments until the ClientHello is whole."""
    offset = 0
    fragments: list[bytes] = []
    received = 0
    message_len = _UNKNOWN
    while True:
        if len(data) - offset < RECORD_HEADER_LEN:
            return _partial_record_header(data, offset)
        content_type, major, minor, record_len = _RECORD_HEADER.unpack_from(data, offset)
        # Record version is 0x0301 for TLS 1.0..1.3 ClientHellos, 0x0300 for SSLv3.
        if (
            content_type != CONTENT_TYPE_HANDSHAKE
            or major != 3
            or minor > 4
            or record_len == 0
            or record_len > MAX_RECORD_LEN
        ):
            return NOT_THIS
        start = offset + RECORD_HEADER_LEN
        fragment = data[start : start + record_len]
        # A list, not +=: a ClientHello in thousands of tiny records stays linear.
        fragments.append(fragment)
        received += len(fragment)
        if message_len == _UNKNOWN:
            # Runs for at most 4 fragments: each record carries at least one byte.
            message_len = _message_len(fragment if len(fragments) == 1 else b"".join(fragments))
            if message_len == _INVALID:
                return NOT_THIS
        if message_len >= 0 and received >= HANDSHAKE_HEADER_LEN + message_len:
            handshake = fragment if len(fragments) == 1 else b"".join(fragments)
            return parse_client_hello(
                handshake[HANDSHAKE_HEADER_LEN : HANDSHAKE_HEADER_LEN + message_len]
            )
        if len(fragment) < record_len:
            return _need_more_unless_full(data)
        offset = start + record_len


def _message_len(handshake: bytes) -> int:
    """Length of the ClientHello body from its handshake header, if known yet."""
    if not handshake:
        return _UNKNOWN
    if handshake[0] != HANDSHAKE_TYPE_CLIENT_HELLO:
        return _INVALID
    if len(handshake) < HANDSHAKE_HEADER_LEN:
        return _UNKNOWN
    message_len = int.from_bytes(handshake[1:4], "big")
    if not MIN_CLIENT_HELLO <= message_len <= MAX_CLIENT_HELLO:
        return _INVALID
    return message_len


def _partial_record_header(data: bytes, offset: int) -> SniffOutcome:
    """Judge the 0..4 bytes of a record header seen so far."""
    header = data[offset:]
    if header[:1] not in (b"", b"\x16"):
        return NOT_THIS
    if len(header) >= 2 and header[1] != 3:
        return NOT_THIS
    if len(header) >= 3 and header[2] > 4:
        return NOT_THIS
    if len(header) >= 4 and header[3] > MAX_RECORD_LEN >> 8:
        return NOT_THIS
    return _need_more_unless_full(data)


def _need_more_unless_full(data: bytes) -> SniffOutcome:
    return NEED_MORE if len(data) < MAX_PEEK else NOT_THIS


def parse_client_hello(body: bytes, protocol: str = PROTOCOL) -> Sniffed | NotThis:
    """Parse a complete ClientHello handshake body (RFC 8446 §4.1.2).

    The framing must be exact (every length consistent, extensions filling the rest
    of the message), which is what makes a random byte string fail. The content of
    SNI and ALPN is read leniently: a malformed one gives no domain / no ALPN.
    """
    pos = _extensions_start(body)
    if pos == _INVALID:
        return NOT_THIS
    if pos == len(body):
        return Sniffed(protocol)  # no extensions: a pre-TLS-1.3 client without SNI

    # Tight loop: real ClientHellos carry 12..20 extensions and only two matter, so
    # the extension numbers are literals here (EXTENSION_SERVER_NAME = 0,
    # EXTENSION_ALPN = 16), a header cut short shows up as struct.error, and the walk
    # stops once both are found. The rest of the list then goes unchecked; the
    # framing checked so far (record, handshake and extensions-block lengths all
    # agreeing) is what random bytes already fail.
    raw_sni = raw_alpn = None
    unpack_header = _U16_PAIR.unpack_from
    end = len(body)
    try:
        while pos < end:
            ext_type, ext_len = unpack_header(body, pos)
            pos += 4 + ext_len
            if ext_type == 0:
                if raw_sni is None:
                    raw_sni = body[pos - ext_len : pos]
                    if raw_alpn is not None:
                        break
            elif ext_type == 16 and raw_alpn is None:
                raw_alpn = body[pos - ext_len : pos]
                if raw_sni is not None:
                    break
    except struct.error:
        return NOT_THIS
    if pos > end or (pos < end and (raw_sni is None or raw_alpn is None)):
        return NOT_THIS
    domain = None if raw_sni is None else _server_name(raw_sni)
    return Sniffed(protocol, domain, () if raw_alpn is None else _alpn_protocols(raw_alpn))


def _extensions_start(body: bytes) -> int:
    """Position of the first extension (``len(body)`` if none), or _INVALID."""
    end = len(body)
    if end < MIN_CLIENT_HELLO or body[0] != 3:
        return _INVALID
    pos: int = 34  # legacy_version(2) + random(32)
    session_id_len = body[pos]
    if session_id_len > 32:
        return _INVALID
    pos += 1 + session_id_len
    if pos + 2 > end:
        return _INVALID
    (suites_len,) = _U16.unpack_from(body, pos)
    if suites_len < 2 or suites_len & 1:
        return _INVALID
    pos += 2 + suites_len
    if pos >= end or body[pos] < 1:  # at least the "null" compression method
        return _INVALID
    pos += 1 + body[pos]
    if pos == end:
        return end
    if pos + 2 > end:
        return _INVALID
    (extensions_len,) = _U16.unpack_from(body, pos)
    if pos + 2 + extensions_len != end:
        return _INVALID
    return pos + 2


def _server_name(extension: bytes) -> str | None:
    """First ``host_name`` entry of a server_name extension (RFC 6066 §3)."""
    if len(extension) > 5:
        list_len, name_type, name_len = _SNI_SINGLE.unpack_from(extension)
        if list_len == name_len + 3 == len(extension) - 2 and name_type == 0:
            return to_domain(extension[5:])  # the usual single host_name entry
    if len(extension) < 2 or _U16.unpack_from(extension, 0)[0] != len(extension) - 2:
        return None
    pos = 2
    while pos + 3 <= len(extension):
        name_type = extension[pos]
        (name_len,) = _U16.unpack_from(extension, pos + 1)
        pos += 3
        if pos + name_len > len(extension):
            return None
        if name_type == SERVER_NAME_TYPE_HOST_NAME:
            return to_domain(extension[pos : pos + name_len])
        pos += name_len
    return None


# Distinct ALPN lists are few (a handful per client stack), so their parse is cached.
@functools.lru_cache(maxsize=256)
def _alpn_protocols(extension: bytes) -> tuple[str, ...]:
    """Protocol names of an ALPN extension (RFC 7301 §3.1), GREASE values dropped."""
    if len(extension) < 2 or _U16.unpack_from(extension, 0)[0] != len(extension) - 2:
        return ()
    pos = 2
    names: list[str] = []
    while pos < len(extension):
        name_len = extension[pos]
        pos += 1
        if name_len == 0 or pos + name_len > len(extension):
            return ()
        name = extension[pos : pos + name_len]
        pos += name_len
        if not _is_grease(name):
            names.append(name.decode("ascii", "backslashreplace"))
    return tuple(names)


def _is_grease(name: bytes) -> bool:
    # RFC 8701 §2: 0x0A0A, 0x1A1A, ..., 0xFAFA.
    return len(name) == 2 and name[0] == name[1] and name[0] & 0x0F == 0x0A
