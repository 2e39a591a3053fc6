"""Shadowsocks AEAD (SIP004) and Shadowsocks 2022 (SIP022) framing, sans-IO.

No sockets and no trio: key derivation, the AEAD nonce counter, and the encoders that
turn plaintext into wire bytes; the decoders (wire bytes in any pieces, plaintext once
whole chunks are in) are shadowsocks_decoder.py's.

* SIP004 (aes-128-gcm, aes-256-gcm, chacha20-ietf-poly1305): master key from the
  password by EVP_BytesToKey (MD5 chain, no salt); per-stream subkey
  HKDF-SHA1(master, salt, info=b"ss-subkey"). A TCP stream is the salt, then chunks
  ``[len(2, BE, <= 0x3FFF) + tag][payload + tag]``; the 12-byte nonce is a little-endian
  counter bumped after every AEAD operation.
* SIP022 (2022-blake3-*): the PSK is the base64 password; the session subkey is BLAKE3
  ``derive_key("shadowsocks 2022 session subkey", psk + salt)``. The request carries a
  fixed header (type, timestamp, variable header length) and a variable header
  (address, padding, initial payload); the response header echoes the request salt.
  UDP packets are shadowsocks_packet.py's.

The target address is the SOCKS5 encoding (ATYP 1/3/4, address, port) of socks_proto.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct
import time

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .socks_proto import Host, SocksProtocolError, encode_address, parse_address

TAG_LEN = 16
NONCE_LEN = 12
MAX_PAYLOAD = 0x3FFF  # SIP004 chunk payload
MAX_PAYLOAD_2022 = 0xFFFF  # SIP022 chunk payload
SUBKEY_INFO = b"ss-subkey"
SUBKEY_CONTEXT_2022 = "shadowsocks 2022 session subkey"
TYPE_CLIENT = 0
TYPE_SERVER = 1
MAX_TIME_DIFF = 30  # seconds, SIP022
MAX_PADDING = 900
AUTH_FAILED = "authentication failed (wrong password or method?)"

AeadType = type[AESGCM] | type[ChaCha20Poly1305]

# name -> (key length, AEAD class)
AEAD_METHODS: dict[str, tuple[int, AeadType]] = {
    "aes-128-gcm": (16, AESGCM),
    "aes-256-gcm": (32, AESGCM),
    "chacha20-ietf-poly1305": (32, ChaCha20Poly1305),
}
METHODS_2022: dict[str, tuple[int, AeadType]] = {
    "2022-blake3-aes-128-gcm": (16, AESGCM),
    "2022-blake3-aes-256-gcm": (32, AESGCM),
    "2022-blake3-chacha20-poly1305": (32, ChaCha20Poly1305),
}


class ShadowsocksError(ValueError):
    """The peer's bytes are not valid Shadowsocks for our key; ``str()`` says what."""


def method_info(method: str) -> tuple[int, AeadType, bool]:
    if method in AEAD_METHODS:
        key_len, cls = AEAD_METHODS[method]
        return key_len, cls, False
    if method in METHODS_2022:
        key_len, cls = METHODS_2022[method]
        return key_len, cls, True
    raise ValueError(f"unknown Shadowsocks method {method!r}")


def is_2022(method: str) -> bool:
    return method_info(method)[2]


def key_length(method: str) -> int:
    return method_info(method)[0]


def evp_bytes_to_key(password: bytes, key_len: int) -> bytes:
    """OpenSSL EVP_BytesToKey with MD5, one iteration, no salt (the SIP004 master key)."""
    out = b""
    prev = b""
    while len(out) < key_len:
        prev = hashlib.md5(prev + password, usedforsecurity=False).digest()
        out += prev
    return out[:key_len]


def hkdf_sha1(master: bytes, salt: bytes, key_len: int) -> bytes:
    """RFC 5869 HKDF with SHA-1 (SIP004 mandates it), info "ss-subkey". Written out
    with hmac.digest: one call per block, several times cheaper per flow than building
    a cryptography HKDF object."""
    prk = hmac.digest(salt, master, "sha1")
    out, block, counter = b"", b"", 1
    while len(out) < key_len:
        block = hmac.digest(prk, block + SUBKEY_INFO + bytes([counter]), "sha1")
        out += block
        counter += 1
    return out[:key_len]


def session_subkey_2022(psk: bytes, salt: bytes) -> bytes:
    return blake3.blake3(psk + salt, derive_key_context=SUBKEY_CONTEXT_2022).digest(
        length=len(psk)
    )


def decode_psk(password: str, method: str) -> bytes:
    """The SIP022 PSK: base64 of exactly the method's key length."""
    key_len = key_length(method)
    try:
        psk = base64.b64decode(password, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{method} needs a base64 password (a {key_len}-byte key)") from None
    if len(psk) != key_len:
        raise ValueError(
            f"{method} needs a base64 key of exactly {key_len} bytes, this one has {len(psk)}"
        )
    return psk


def master_key(method: str, password: str) -> bytes:
    """The key the salt is mixed into: EVP_BytesToKey (SIP004) or the PSK (SIP022)."""
    if is_2022(method):
        return decode_psk(password, method)
    return evp_bytes_to_key(password.encode(), key_length(method))


def subkey(method: str, key: bytes, salt: bytes) -> bytes:
    if is_2022(method):
        return session_subkey_2022(key, salt)
    return hkdf_sha1(key, salt, len(key))


class Aead:
    """An AEAD with the SIP004/SIP022 little-endian nonce counter (``counter`` is the
    next nonce's; Decryptor's chunk loop reads and bumps it itself)."""

    def __init__(self, cls: AeadType, subkey: bytes) -> None:
        self.cipher: AESGCM | ChaCha20Poly1305 = cls(subkey)
        self.counter = 0

    def _nonce(self) -> bytes:
        nonce = self.counter.to_bytes(NONCE_LEN, "little")
        self.counter += 1
        return nonce

    def seal(self, data: bytes | memoryview) -> bytes:
        return self.cipher.encrypt(self._nonce(), data, None)

    def open(self, data: bytes | memoryview) -> bytes:
        try:
            return self.cipher.decrypt(self._nonce(), data, None)
        except InvalidTag:
            raise ShadowsocksError(AUTH_FAILED) from None


class Encryptor:
    """Plaintext -> TCP wire bytes for one direction. The first output carries the salt.

    For SIP022 this only does the length/payload chunks; the request and response
    headers are :class:`RequestEncoder` / :func:`encode_response_header`'s job.
    """

    def __init__(self, method: str, key: bytes, salt: bytes | None = None) -> None:
        key_len, cls, self._v2022 = method_info(method)
        if len(key) != key_len:
            raise ValueError(f"{method} key is {key_len} bytes")
        self.salt = os.urandom(key_len) if salt is None else salt
        if len(self.salt) != key_len:
            raise ValueError(f"{method} salt is {key_len} bytes")
        self._aead = Aead(cls, subkey(method, key, self.salt))
        self._salt_sent = False
        self.max_payload = MAX_PAYLOAD_2022 if self._v2022 else MAX_PAYLOAD

    def take_salt(self) -> bytes:
        """The salt the first output starts with; empty once it went out."""
        if self._salt_sent:
            return b""
        self._salt_sent = True
        return self.salt

    def seal(self, data: bytes | memoryview) -> bytes:
        """One AEAD operation under the next nonce (headers are sealed whole)."""
        return self._aead.seal(data)

    def encrypt(self, data: bytes | bytearray | memoryview) -> bytes:
        out = [self.take_salt()]
        view = memoryview(data)
        for i in range(0, len(view), self.max_payload):
            chunk = view[i : i + self.max_payload]  # sealed in place: no copy of the chunk
            out += (self._aead.seal(struct.pack("!H", len(chunk))), self._aead.seal(chunk))
        return b"".join(out)

    def wire_size(self, n: int) -> int:
        """How many bytes :meth:`encrypt_into` writes for ``n`` bytes of plaintext."""
        chunks = -(-n // self.max_payload)
        return (0 if self._salt_sent else len(self.salt)) + n + chunks * (2 + 2 * TAG_LEN)

    def encrypt_into(self, data: bytes | bytearray | memoryview, out: memoryview) -> int:
        """:meth:`encrypt` sealed straight into ``out`` (at least :meth:`wire_size`
        bytes): the upload path's buffer, no per-chunk objects and no join. Returns
        the number of bytes written."""
        view = memoryview(data)
        salt = self.take_salt()
        pos = len(salt)
        out[:pos] = salt
        aead, step = self._aead, self.max_payload
        counter, encrypt_into = aead.counter, aead.cipher.encrypt_into
        for i in range(0, len(view), step):
            chunk = view[i : i + step]
            n = len(chunk)
            encrypt_into(counter.to_bytes(NONCE_LEN, "little"), n.to_bytes(2, "big"), None,
                         out[pos : pos + 2 + TAG_LEN])  # fmt: skip
            pos += 2 + TAG_LEN
            encrypt_into((counter + 1).to_bytes(NONCE_LEN, "little"), chunk, None,
                         out[pos : pos + n + TAG_LEN])  # fmt: skip
            pos += n + TAG_LEN
            counter += 2
        aead.counter = counter
        return pos


def parse_addr(buf: bytes, offset: int) -> tuple[Host, int, int]:
    try:
        parsed = parse_address(buf, offset)
    except SocksProtocolError as exc:
        raise ShadowsocksError(f"address: {exc}") from None
    if parsed is None:
        raise ShadowsocksError("packet ends inside the address")
    return parsed


# --- SIP022 TCP ---------------------------------------------------------------------


def check_time(ts: int, now: float | None) -> None:
    now = time.time() if now is None else now
    if abs(now - ts) > MAX_TIME_DIFF:
        raise ShadowsocksError(
            f"timestamp {ts} is {int(now - ts)} s off our clock (over {MAX_TIME_DIFF} s)"
        )


class RequestEncoder(Encryptor):
    """SIP022 client stream: :meth:`header` first (salt + fixed + variable header), then
    :meth:`encrypt` for the rest."""

    def header(self, host: Host, port: int, payload: bytes = b"",
               now: float | None = None) -> bytes:
        if not self._v2022:
            raise ValueError("a SIP004 request is just encrypt(address + payload)")
        if payload:
            padding = b""
        else:
            padding = os.urandom(1 + int.from_bytes(os.urandom(2), "big") % MAX_PADDING)
        var = encode_address(host, port) + struct.pack("!H", len(padding)) + padding + payload
        if len(var) > MAX_PAYLOAD_2022:
            raise ValueError("request header and initial payload over 0xFFFF bytes")
        ts = int(time.time() if now is None else now)
        fixed = struct.pack("!BQH", TYPE_CLIENT, ts, len(var))
        return self.take_salt() + self.seal(fixed) + self.seal(var)


def encode_response_header(enc: Encryptor, request_salt: bytes, payload: bytes,
                           now: float | None = None) -> bytes:
    """SIP022 server side (for tests and a future inbound): salt + fixed header + first
    payload chunk."""
    ts = int(time.time() if now is None else now)
    fixed = struct.pack("!BQ", TYPE_SERVER, ts) + request_salt + struct.pack("!H", len(payload))
    return enc.take_salt() + enc.seal(fixed) + enc.seal(payload)
