"""Shadowsocks AEAD (SIP004) and Shadowsocks 2022 (SIP022) framing, sans-IO.

No sockets and no trio: encryptors turn plaintext into wire bytes, decryptors take wire
bytes in any pieces and hand back plaintext once whole chunks are in.

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


def _subkey(method: str, key: bytes, salt: bytes) -> bytes:
    if is_2022(method):
        return session_subkey_2022(key, salt)
    return hkdf_sha1(key, salt, len(key))


class _Aead:
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
        self._aead = _Aead(cls, _subkey(method, key, self.salt))
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


# What one receive may take: the room a decryptor's buffer offers each time.
RECV_ROOM = 65536
# A partial chunk up to this size is copied aside while the stream waits, so that its
# buffer can go back; a larger one keeps its buffer (copying it twice costs more).
CARRY_MAX = 4096
# Idle decryptor buffers kept for the next wake-up of any flow, per size: allocating
# zeroes them; keeping more holds memory (8 of each: 1.8 MB for SIP004, 2.6 MB for 2022).
KEEP_BUFFERS = 8
_EMPTY = memoryview(b"")


class _Buffers:
    """Free lists of the decryptors' buffers, by size: a flow holds its two only while
    bytes flow (see :meth:`Decryptor.release`), so idle flows cost no buffer memory."""

    def __init__(self) -> None:
        self._free: dict[int, list[bytearray]] = {}

    def acquire(self, size: int) -> bytearray:
        free = self._free.get(size)
        return free.pop() if free else bytearray(size)

    def release(self, buf: bytearray) -> None:
        free = self._free.setdefault(len(buf), [])
        if len(free) < KEEP_BUFFERS:
            free.append(buf)


_buffers = _Buffers()


class Decryptor:
    """TCP wire bytes in any pieces -> plaintext, for SIP004 streams (and SIP022 after
    its header: see :class:`ResponseDecoder`).

    Receive straight into :meth:`buffer` and call :meth:`received`: chunks are opened
    where they lie, into a second buffer whose view is returned (valid until the next
    call), so the download path copies nothing but what the kernel and the cipher
    must (bench/bench_cipher.py). :meth:`feed` is the same for bytes already at hand.
    """

    def __init__(self, method: str, key: bytes) -> None:
        self._key_len, self._cls, self._v2022 = method_info(method)
        if len(key) != self._key_len:
            raise ValueError(f"{method} key is {self._key_len} bytes")
        self._method = method
        self._key = key
        self._aead: _Aead | None = None
        self._pending: int | None = None  # payload length read, payload not yet
        self.max_payload = MAX_PAYLOAD_2022 if self._v2022 else MAX_PAYLOAD
        self.salt: bytes | None = None
        # Received bytes are _in[_start:_end]; after received() at most one partial
        # chunk (under `chunk` bytes). Room for two receives ahead of it means the
        # partial chunk moves to the front every other receive at most; the output
        # holds what one receive completes: the partial chunk and the receive.
        chunk = 2 + TAG_LEN + self.max_payload + TAG_LEN
        self._in_size = 2 * RECV_ROOM + chunk
        self._out_size = RECV_ROOM + chunk
        self._in_buf: bytearray | None = None
        self._out_buf: bytearray | None = None
        self._in: memoryview | None = None  # views of the two
        self._out: memoryview | None = None
        self._start = self._end = 0
        self._carry = b""  # a partial chunk kept while the input buffer is given back

    def buffer(self) -> memoryview:
        """Where the next received bytes go: RECV_ROOM bytes."""
        if self._out is None:
            self._out_buf = _buffers.acquire(self._out_size)
            self._out = memoryview(self._out_buf)
        buf = self._in
        if buf is None:
            self._in_buf = _buffers.acquire(self._in_size)
            self._in = buf = memoryview(self._in_buf)
            carry = self._carry
            buf[: len(carry)] = carry
            self._start, self._end, self._carry = 0, len(carry), b""
        elif self._in_size - self._end < RECV_ROOM:
            left = self._end - self._start
            buf[:left] = buf[self._start : self._end]  # under one chunk
            self._start, self._end = 0, left
        return buf[self._end : self._end + RECV_ROOM]

    def received(self, n: int) -> memoryview:
        """``n`` more bytes are in :meth:`buffer`: the plaintext of every whole chunk
        now in, as a view valid until the next call (empty: need more)."""
        self._end += n
        if self._aead is None:
            if self._end - self._start < self._key_len:
                return _EMPTY
            salt = self._take(self._key_len)
            assert salt is not None
            self._start_salt(bytes(salt))
        written = self._header()
        if written < 0:
            return _EMPTY
        return self._chunks(written)

    def release(self) -> None:
        """The stream waits for more: the output buffer goes back, and the input
        buffer too unless it holds over CARRY_MAX bytes of a chunk not yet whole."""
        if self._out_buf is not None:
            self._out = None  # our view goes before the buffer does
            _buffers.release(self._out_buf)
            self._out_buf = None
        if self._in is None or self._end - self._start > CARRY_MAX:
            return
        assert self._in_buf is not None
        self._carry = bytes(self._in[self._start : self._end])
        self._in = None
        _buffers.release(self._in_buf)
        self._in_buf = None

    @property
    def holds_buffers(self) -> bool:
        return self._in is not None or self._out is not None

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """:meth:`received` for bytes at hand (any amount), as bytes of their own."""
        view = memoryview(data)
        out = []
        while True:
            space = self.buffer()
            n = min(len(space), len(view))
            space[:n] = view[:n]
            view = view[n:]
            out.append(bytes(self.received(n)))
            if not view:
                break
        self.release()
        return b"".join(out)

    def _start_salt(self, salt: bytes) -> None:
        self.salt = salt
        self._aead = _Aead(self._cls, _subkey(self._method, self._key, salt))

    def _take(self, n: int) -> memoryview | None:
        """The next ``n`` received bytes, in place, or None (need more)."""
        start = self._start
        if self._end - start < n:
            return None
        assert self._in is not None
        self._start = start + n
        return self._in[start : start + n]

    def _header(self) -> int:
        """Subclasses: decode what comes before the chunks; plaintext bytes written to
        the output buffer, or -1 while the header is incomplete."""
        return 0

    def _chunks(self, written: int) -> memoryview:
        """Open every whole chunk buffered, into the output buffer after ``written``.
        The download's hot loop: the nonce counter and the cipher's methods are local."""
        aead, buf, out = self._aead, self._in, self._out
        assert aead is not None and buf is not None and out is not None
        start, end, pending = self._start, self._end, self._pending
        counter, limit = aead.counter, self.max_payload
        decrypt, decrypt_into = aead.cipher.decrypt, aead.cipher.decrypt_into
        try:
            while True:
                if pending is None:
                    if end - start < 2 + TAG_LEN:
                        break
                    nonce = counter.to_bytes(NONCE_LEN, "little")
                    length = decrypt(nonce, buf[start : start + 2 + TAG_LEN], None)
                    pending = int.from_bytes(length, "big")
                    counter += 1
                    if pending > limit:
                        raise ShadowsocksError(f"chunk length {pending} over {limit}: "
                                               + AUTH_FAILED)  # fmt: skip
                    start += 2 + TAG_LEN
                stop = start + pending + TAG_LEN
                if stop > end:
                    break
                decrypt_into(counter.to_bytes(NONCE_LEN, "little"), buf[start:stop], None,
                             out[written : written + pending])  # fmt: skip
                counter += 1
                written += pending
                start, pending = stop, None
        except InvalidTag:
            raise ShadowsocksError(AUTH_FAILED) from None
        finally:
            self._start, self._pending, aead.counter = start, pending, counter
        return out[:written]


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


class ResponseDecoder(Decryptor):
    """SIP022 client side of the response: checks type, timestamp and request salt, then
    decodes chunks like :class:`Decryptor`."""

    def __init__(self, method: str, key: bytes, request_salt: bytes,
                 now: float | None = None) -> None:
        super().__init__(method, key)
        if not self._v2022:
            raise ValueError("ResponseDecoder is for 2022 methods; use Decryptor")
        self._request_salt = request_salt
        self._now = now
        self._header_done = False

    def _header(self) -> int:
        if self._header_done:
            return 0
        assert self._aead is not None
        sealed = self._take(1 + 8 + self._key_len + 2 + TAG_LEN)
        if sealed is None:
            return -1
        fixed = self._aead.open(sealed)
        kind, ts = struct.unpack_from("!BQ", fixed)
        if kind != TYPE_SERVER:
            raise ShadowsocksError(f"response header type {kind}, not {TYPE_SERVER}")
        check_time(ts, self._now)
        if fixed[9 : 9 + self._key_len] != self._request_salt:
            raise ShadowsocksError("response is not for our request (salt differs)")
        # the fixed header ends with the first chunk's length: its payload follows
        (self._pending,) = struct.unpack_from("!H", fixed, 9 + self._key_len)
        self._header_done = True
        return 0


class RequestDecoder(Decryptor):
    """SIP022 server side of the request (tests, and a future inbound)."""

    def __init__(self, method: str, key: bytes, now: float | None = None) -> None:
        super().__init__(method, key)
        if not self._v2022:
            raise ValueError("RequestDecoder is for 2022 methods; use Decryptor")
        self._now = now
        self.target: tuple[Host, int] | None = None
        self._var_len: int | None = None

    def _header(self) -> int:
        if self.target is not None:
            return 0
        assert self._aead is not None and self._out is not None
        if self._var_len is None:
            sealed = self._take(11 + TAG_LEN)
            if sealed is None:
                return -1
            kind, ts, self._var_len = struct.unpack("!BQH", self._aead.open(sealed))
            if kind != TYPE_CLIENT:
                raise ShadowsocksError(f"request header type {kind}, not {TYPE_CLIENT}")
            check_time(ts, self._now)
        sealed = self._take(self._var_len + TAG_LEN)
        if sealed is None:
            return -1
        var = self._aead.open(sealed)
        host, port, end = parse_addr(var, 0)
        if len(var) < end + 2:
            raise ShadowsocksError("request header ends before the padding length")
        (pad,) = struct.unpack_from("!H", var, end)
        if end + 2 + pad > len(var):
            raise ShadowsocksError("request padding runs past the header")
        self.target = (host, port)
        payload = var[end + 2 + pad :]
        self._out[: len(payload)] = payload
        return len(payload)
