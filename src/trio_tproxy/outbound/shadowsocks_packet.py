"""Shadowsocks UDP packets, sans-IO: each datagram sealed on its own.

* SIP004: salt + AEAD(HKDF subkey of that salt, nonce 0, address + payload).
* SIP022: a session id and a packet id per datagram. AES methods put them in a 16-byte
  header encrypted with AES-ECB under the PSK and seal the body with the session
  subkey; 2022-blake3-chacha20-poly1305 seals header and body together with
  XChaCha20-Poly1305 under the PSK (built here from HChaCha20, which ``cryptography``
  lacks). Replays are the receiver's to refuse, with a :class:`ReplayWindow` per
  session.

Keys, the stream framing and the address parsing they share are shadowsocks_proto.py's.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from .shadowsocks_proto import (
    AUTH_FAILED,
    NONCE_LEN,
    TAG_LEN,
    TYPE_CLIENT,
    TYPE_SERVER,
    AeadType,
    ShadowsocksError,
    check_time,
    hkdf_sha1,
    method_info,
    parse_addr,
    session_subkey_2022,
)
from .socks_proto import Host, encode_address

# --- SIP004 UDP ---------------------------------------------------------------------


def udp_seal(method: str, key: bytes, host: Host, port: int, payload: bytes,
             *, salt: bytes | None = None) -> bytes:
    """One SIP004 UDP packet: salt + AEAD(subkey, nonce 0, address + payload)."""
    key_len, cls, v2022 = method_info(method)
    if v2022:
        raise ValueError(f"{method} UDP is udp2022_seal's job")
    salt = os.urandom(key_len) if salt is None else salt
    aead = cls(hkdf_sha1(key, salt, key_len))
    return salt + aead.encrypt(bytes(NONCE_LEN), encode_address(host, port) + payload, None)


def udp_open(method: str, key: bytes, packet: bytes) -> tuple[Host, int, bytes]:
    key_len, cls, v2022 = method_info(method)
    if v2022:
        raise ValueError(f"{method} UDP is udp2022_open's job")
    if len(packet) < key_len + TAG_LEN:
        raise ShadowsocksError("UDP packet shorter than salt + tag")
    salt = packet[:key_len]
    try:
        plain = cls(hkdf_sha1(key, salt, key_len)).decrypt(
            bytes(NONCE_LEN), packet[key_len:], None
        )
    except InvalidTag:
        raise ShadowsocksError(AUTH_FAILED) from None
    host, port, end = parse_addr(plain, 0)
    return host, port, plain[end:]


# --- SIP022 UDP ------------------------------------------------------------------------


class ReplayWindow:
    """Sliding bitmap over packet ids: a new id is accepted once, an id more than
    ``size`` below the highest seen is rejected."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self._top = -1
        self._bits = 0

    def check(self, pid: int) -> bool:
        """Would ``pid`` be accepted? (does not record it)"""
        if pid > self._top:
            return True
        back = self._top - pid
        return back < self.size and not (self._bits >> back) & 1

    def accept(self, pid: int) -> bool:
        """Record ``pid``; False if it is a replay or too old."""
        if not self.check(pid):
            return False
        if pid > self._top:
            shift = pid - self._top
            self._bits = ((self._bits << shift) | 1) & ((1 << self.size) - 1)
            self._top = pid
        else:
            self._bits |= 1 << (self._top - pid)
        return True


@dataclass
class Udp2022Packet:
    session_id: bytes
    packet_id: int
    host: Host
    port: int
    payload: bytes
    client_session_id: bytes | None = None  # server -> client only


def _ecb(psk: bytes) -> Cipher[modes.ECB]:
    return Cipher(algorithms.AES(psk), modes.ECB())  # noqa: S305 - SIP022: one block


_CHACHA_CONSTANTS = struct.unpack("<4I", b"expand 32-byte k")


def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (draft-irtf-cfrg-xchacha §2.2): the 20 rounds without the final
    addition, words 0-3 and 12-15. cryptography's ChaCha20 block is rounds + input, and
    its 16-byte nonce is exactly input words 12-15, so subtracting the input back out
    of one keystream block gives the HChaCha20 output."""
    block = Cipher(algorithms.ChaCha20(key, nonce16), mode=None).encryptor().update(bytes(64))
    words = struct.unpack("<16I", block)
    given = struct.unpack("<4I", nonce16)
    out = [(words[i] - _CHACHA_CONSTANTS[i]) & 0xFFFFFFFF for i in range(4)]
    out += [(words[12 + i] - given[i]) & 0xFFFFFFFF for i in range(4)]
    return struct.pack("<8I", *out)


class XChaCha20Poly1305:
    """XChaCha20-Poly1305 (24-byte nonce) from HChaCha20 + ChaCha20-Poly1305, which is
    all cryptography offers; SIP022 UDP for 2022-blake3-chacha20-poly1305 needs it."""

    NONCE_LEN = 24

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("XChaCha20-Poly1305 key is 32 bytes")
        self._key = key

    def _inner(self, nonce: bytes) -> tuple[ChaCha20Poly1305, bytes]:
        if len(nonce) != self.NONCE_LEN:
            raise ValueError("XChaCha20-Poly1305 nonce is 24 bytes")
        return ChaCha20Poly1305(hchacha20(self._key, nonce[:16])), bytes(4) + nonce[16:]

    def encrypt(self, nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
        aead, inner_nonce = self._inner(nonce)
        return aead.encrypt(inner_nonce, data, aad)

    def decrypt(self, nonce: bytes, data: bytes, aad: bytes | None) -> bytes:
        aead, inner_nonce = self._inner(nonce)
        return aead.decrypt(inner_nonce, data, aad)


def _udp2022_cls(method: str) -> AeadType:
    _, cls, v2022 = method_info(method)
    if not v2022:
        raise ValueError(f"{method} is not a 2022 method")
    return cls


def udp2022_seal(  # noqa: PLR0917 the packet fields, in wire order
                 method: str, psk: bytes, session_id: bytes, packet_id: int, host: Host,
                 port: int, payload: bytes, *, client_session_id: bytes | None = None,
                 padding: bytes = b"", now: float | None = None,
                 nonce: bytes | None = None) -> bytes:
    """One SIP022 UDP packet; pass ``client_session_id`` for server -> client.

    AES methods: the 16-byte session id + packet id header, AES-ECB encrypted with the
    PSK, then the body sealed with the session subkey (nonce: header bytes 4-16).
    2022-blake3-chacha20-poly1305: a random 24-byte nonce, then header and body sealed
    together with XChaCha20-Poly1305 under the PSK itself."""
    cls = _udp2022_cls(method)
    if len(session_id) != 8:
        raise ValueError("session id is 8 bytes")
    header = session_id + struct.pack("!Q", packet_id)
    ts = int(time.time() if now is None else now)
    if client_session_id is None:
        body = struct.pack("!BQ", TYPE_CLIENT, ts)
    else:
        body = struct.pack("!BQ", TYPE_SERVER, ts) + client_session_id
    body += struct.pack("!H", len(padding)) + padding + encode_address(host, port) + payload
    if cls is ChaCha20Poly1305:
        nonce = os.urandom(XChaCha20Poly1305.NONCE_LEN) if nonce is None else nonce
        return nonce + XChaCha20Poly1305(psk).encrypt(nonce, header + body, None)
    enc = _ecb(psk).encryptor()
    sep = enc.update(header) + enc.finalize()
    aead = cls(session_subkey_2022(psk, session_id))
    sealed: bytes = aead.encrypt(header[4:], body, None)
    return sep + sealed


def _udp2022_unseal(cls: AeadType, psk: bytes, packet: bytes) -> tuple[bytes, bytes]:
    """(16-byte header, body) of a SIP022 UDP packet; ShadowsocksError if it fails."""
    try:
        if cls is ChaCha20Poly1305:
            n = XChaCha20Poly1305.NONCE_LEN
            if len(packet) < n + 16 + TAG_LEN:
                raise ShadowsocksError("UDP packet shorter than nonce + header + tag")
            plain = XChaCha20Poly1305(psk).decrypt(packet[:n], packet[n:], None)
            return plain[:16], plain[16:]
        if len(packet) < 16 + TAG_LEN:
            raise ShadowsocksError("UDP packet shorter than header + tag")
        dec = _ecb(psk).decryptor()
        header = dec.update(packet[:16]) + dec.finalize()
        body: bytes = cls(session_subkey_2022(psk, header[:8])).decrypt(
            header[4:], packet[16:], None
        )
    except InvalidTag:
        raise ShadowsocksError(AUTH_FAILED) from None
    return header, body


def udp2022_open(method: str, psk: bytes, packet: bytes, *, from_server: bool,
                 now: float | None = None) -> Udp2022Packet:
    """Decrypt and check one SIP022 UDP packet (replay checking is the caller's, with a
    :class:`ReplayWindow` per session)."""
    header, body = _udp2022_unseal(_udp2022_cls(method), psk, packet)
    session_id = header[:8]
    (packet_id,) = struct.unpack_from("!Q", header, 8)
    want = TYPE_SERVER if from_server else TYPE_CLIENT
    pos = 9 + (8 if from_server else 0)
    if len(body) < pos + 2:
        raise ShadowsocksError("UDP body shorter than its header")
    kind, ts = struct.unpack_from("!BQ", body)
    if kind != want:
        raise ShadowsocksError(f"UDP header type {kind}, not {want}")
    check_time(ts, now)
    client_sid = body[9:17] if from_server else None
    (pad,) = struct.unpack_from("!H", body, pos)
    pos += 2 + pad
    if pos > len(body):
        raise ShadowsocksError("UDP padding runs past the packet")
    host, port, end = parse_addr(body, pos)
    return Udp2022Packet(session_id, packet_id, host, port, body[end:], client_sid)
