"""Shadowsocks TCP decoding, sans-IO: wire bytes in any pieces -> plaintext, for SIP004
streams and both ends of a SIP022 stream (the response the outbound reads, the request
that tests and a future inbound read). Key derivation, the nonce counter and the
encoders are shadowsocks_proto.py's.

The download path lives here, so it is built around its copies: a stream receives
straight into :meth:`Decryptor.buffer`, chunks are opened where they lie into a second
buffer, and the plaintext leaves as a view of it; the two buffers come from a small free
list and go back while the stream waits, so idle flows hold none.
"""

from __future__ import annotations

import struct

from cryptography.exceptions import InvalidTag

from .shadowsocks_proto import (
    AUTH_FAILED,
    MAX_PAYLOAD,
    MAX_PAYLOAD_2022,
    NONCE_LEN,
    TAG_LEN,
    TYPE_CLIENT,
    TYPE_SERVER,
    Aead,
    ShadowsocksError,
    check_time,
    method_info,
    parse_addr,
    subkey,
)
from .socks_proto import Host

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
        self._aead: Aead | None = None
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
        self._aead = Aead(self._cls, subkey(self._method, self._key, salt))

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
