"""Opening QUIC client Initial packets: header parsing, Initial keys, decryption.

Initial packets are encrypted, but with keys anyone can derive from the packet's
Destination Connection ID (RFC 9001 §5.2), so an on-path observer can read them;
that is what QUIC sniffing is. Supported versions: v1 (RFC 9000/9001), v2
(RFC 9369: other salt, ``quicv2`` labels, other long-header type bits) and
draft-29, which old Chrome builds and v2ray still speak.

``cryptography`` is imported on the first packet that parses as a client Initial of a
supported version, not with this module: its OpenSSL build costs a process ~6 MB of
memory, and a gateway that never sees QUIC (or does not sniff UDP) should not pay it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

import attrs

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers import CipherContext
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = ["VERSIONS", "QuicVersion", "initial_payloads", "load_ciphers", "read_varint"]

VERSION_1: Final = 0x00000001
VERSION_2: Final = 0x6B3343CF
VERSION_DRAFT_29: Final = 0xFF00001D


@attrs.frozen
class QuicVersion:
    salt: bytes
    label_prefix: bytes  # b"quic " (v1, draft-29) or b"quicv2 " (RFC 9369 §3.3.2)
    initial_type: int  # long-header type bits of Initial (RFC 9369 §3.2)


VERSIONS: Final = {
    VERSION_1: QuicVersion(bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"), b"quic ", 0),
    VERSION_2: QuicVersion(
        bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"), b"quicv2 ", 1
    ),
    VERSION_DRAFT_29: QuicVersion(
        bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899"), b"quic ", 0
    ),
}

# RFC 9000 §17.2: connection IDs are at most 20 bytes in v1 (and v2, draft-29).
MAX_CID_LEN: Final = 20
# RFC 9001 §5.4.2: the header-protection sample starts 4 bytes after the packet
# number field's start and is 16 bytes long; AES-GCM's tag is 16 bytes.
SAMPLE_OFFSET: Final = 4
SAMPLE_LEN: Final = 16
# Initial keys depend only on (version, DCID); a client sends all its Initials to one
# DCID, so a flow hits the cache after its first datagram. Bounded: the DCID is
# chosen by whoever sends the packet.
KEY_CACHE_SIZE: Final = 256


@attrs.frozen
class _InitialKeys:
    aead: AESGCM
    iv: int
    # An ECB encryptor context, kept: ECB has no state between blocks, so the same
    # context masks every sample of the flow (a fresh Cipher+encryptor costs ~5 us,
    # more than the whole rest of opening a packet). Sniffers run under the GIL and
    # cryptography does not release it for a one-block update.
    header_protection: CipherContext


# HMAC-SHA256 from hashlib's primitives: hmac.digest() pays ~3 us of OpenSSL setup per
# call, and deriving a flow's Initial keys takes five HMACs on a cold path that every
# new QUIC flow walks. RFC 2104: H((K ^ opad) || H((K ^ ipad) || m)), K padded to 64.
_IPAD: Final = bytes(byte ^ 0x36 for byte in range(256))
_OPAD: Final = bytes(byte ^ 0x5C for byte in range(256))
_SHA256_BLOCK: Final = 64


def _hmac_sha256(key: bytes, message: bytes) -> bytes:
    key = key.ljust(_SHA256_BLOCK, b"\x00")
    inner = hashlib.sha256(key.translate(_IPAD) + message).digest()
    return hashlib.sha256(key.translate(_OPAD) + inner).digest()


def _hkdf_expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label of TLS 1.3 (RFC 8446 §7.1) with empty context, length <= 32."""
    full_label = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes((len(full_label),)) + full_label + b"\x00"
    return _hmac_sha256(secret, info + b"\x01")[:length]


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def _initial_keys(version: int, dcid: bytes) -> _InitialKeys:
    """Client Initial key, IV and header-protection key (RFC 9001 §5.2, RFC 9369 §3.3)."""
    params = VERSIONS[version]
    initial_secret = _hmac_sha256(params.salt, dcid)  # HKDF-Extract
    client_secret = _hkdf_expand_label(initial_secret, b"client in", 32)
    prefix = params.label_prefix
    key = _hkdf_expand_label(client_secret, prefix + b"key", 16)
    iv = _hkdf_expand_label(client_secret, prefix + b"iv", 12)
    hp = _hkdf_expand_label(client_secret, prefix + b"hp", 16)
    aead, aes_ecb_encryptor = _ciphers()
    return _InitialKeys(
        aead=aead(key), iv=int.from_bytes(iv, "big"), header_protection=aes_ecb_encryptor(hp)
    )


def load_ciphers() -> None:
    """Import the ciphers now, for a process about to fork workers that will sniff QUIC:
    imported before the fork, they are shared instead of loaded by every worker."""
    _ciphers()


@functools.cache
def _ciphers() -> tuple[type[AESGCM], Callable[[bytes], CipherContext]]:
    """AES-GCM and an AES-ECB encryptor from cryptography, imported on the first call
    and kept: the two import statements cost ~1 us, on every new QUIC flow if they ran
    in the key derivation itself."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: PLC0415
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: PLC0415

    def aes_ecb_encryptor(key: bytes) -> CipherContext:
        # RFC 9001 §5.4.3 defines the mask as AES-ECB of one 16-byte sample.
        return Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # noqa: S305

    return AESGCM, aes_ecb_encryptor


def read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    """RFC 9000 §16 variable-length integer at ``pos`` -> (value, next pos); (-1, pos) if cut."""
    if pos >= len(buf):
        return -1, pos
    first = buf[pos]
    size = 1 << (first >> 6)
    if pos + size > len(buf):
        return -1, pos
    if size == 1:
        return first, pos + 1
    value = int.from_bytes(buf[pos : pos + size], "big") & ((1 << (8 * size - 2)) - 1)
    return value, pos + size


def initial_payloads(datagram: bytes) -> Iterator[bytes | None]:
    """Decrypted payloads of the client Initial packets coalesced in one datagram.

    Yields ``None`` for a packet that looks like a supported Initial but does not
    decrypt, then stops: the rest of the datagram cannot be trusted. Stops silently
    at anything that is not a long-header packet of a supported version (a short
    header packet, zero padding after the last packet). 0-RTT and Handshake packets
    coalesced after an Initial are stepped over.
    """
    pos = 0
    end = len(datagram)
    while pos < end:
        first = datagram[pos]
        if not first & 0x80 or pos + 7 > end:
            return
        version = int.from_bytes(datagram[pos + 1 : pos + 5], "big")
        params = VERSIONS.get(version)
        if params is None:
            return
        dcid_len = datagram[pos + 5]
        if dcid_len > MAX_CID_LEN:
            return
        dcid_end = pos + 6 + dcid_len
        if dcid_end >= end:
            return
        scid_len = datagram[dcid_end]
        cursor = dcid_end + 1 + scid_len
        if scid_len > MAX_CID_LEN or cursor > end:
            return
        is_initial = (first >> 4) & 3 == params.initial_type
        if is_initial:
            token_len, cursor = read_varint(datagram, cursor)
            if token_len < 0:
                return
            cursor += token_len
        length, pn_offset = read_varint(datagram, cursor)
        packet_end = pn_offset + length
        if length < 0 or packet_end > end:
            return
        if is_initial:
            dcid = datagram[pos + 6 : dcid_end]
            yield _open(datagram, pos, pn_offset, packet_end, _initial_keys(version, dcid))
        pos = packet_end


def _open(
    datagram: bytes, start: int, pn_offset: int, packet_end: int, keys: _InitialKeys
) -> bytes | None:
    """Remove header protection (RFC 9001 §5.4) and decrypt one Initial packet."""
    sample_start = pn_offset + SAMPLE_OFFSET
    if sample_start + SAMPLE_LEN > packet_end:
        return None
    mask = keys.header_protection.update(datagram[sample_start : sample_start + SAMPLE_LEN])
    first = datagram[start] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    packet_number = int.from_bytes(datagram[pn_offset : pn_offset + pn_len], "big") ^ (
        int.from_bytes(mask[1 : 1 + pn_len], "big")
    )
    header = (
        bytes((first,)) + datagram[start + 1 : pn_offset] + packet_number.to_bytes(pn_len, "big")
    )
    # A client's Initial packet numbers start at 0 and stay tiny, so the truncated
    # number is the full one (RFC 9000 §17.1 decoding against largest acked = none).
    nonce = (keys.iv ^ packet_number).to_bytes(12, "big")
    try:
        return keys.aead.decrypt(nonce, datagram[pn_offset + pn_len : packet_end], header)
    except _invalid_tag():  # evaluated only when decrypt raised
        return None


def _invalid_tag() -> type[Exception]:
    from cryptography.exceptions import InvalidTag  # noqa: PLC0415 - imported with the keys

    return InvalidTag
