"""Trojan requests and UDP frames, sans-IO.

The request is the password's hex SHA-224, CRLF, a command, a SOCKS address, CRLF, then
the first payload. UDP ASSOCIATE frames are a SOCKS address, a 2-byte length, CRLF and
the payload; :class:`UdpFrameDecoder` takes stream bytes in any pieces.
"""

from __future__ import annotations

import hashlib
import struct

from .socks_proto import Host, SocksProtocolError, encode_address, parse_address

CRLF = b"\r\n"
CMD_CONNECT = 1
CMD_UDP_ASSOCIATE = 3
HASH_LEN = 56
MAX_UDP_PAYLOAD = 0xFFFF  # the 2-byte length field
MAX_BUFFER = 2 * 1024 * 1024  # never buffer more than this for one frame


class TrojanProtocolError(ValueError):
    """The peer sent something that is not a Trojan UDP frame; ``str()`` says what."""


def password_hash(password: str) -> bytes:
    return hashlib.sha224(password.encode()).hexdigest().encode("ascii")


def encode_request(
    pw_hash: bytes, command: int, host: Host, port: int, payload: bytes = b""
) -> bytes:
    if len(pw_hash) != HASH_LEN:
        raise ValueError(f"a Trojan password hash is {HASH_LEN} hex characters")
    if command not in (CMD_CONNECT, CMD_UDP_ASSOCIATE):
        raise ValueError(f"unknown Trojan command {command}")
    return pw_hash + CRLF + bytes([command]) + encode_address(host, port) + CRLF + payload


def encode_udp_frame(host: Host, port: int, payload: bytes) -> bytes:
    if len(payload) > MAX_UDP_PAYLOAD:
        raise ValueError(f"UDP payload of {len(payload)} bytes over {MAX_UDP_PAYLOAD}")
    return encode_address(host, port) + struct.pack("!H", len(payload)) + CRLF + payload


def parse_udp_frame(buf: bytes) -> tuple[tuple[Host, int, bytes], int] | None:
    """h11 style: ``((host, port, payload), consumed)``, or None (NEED_MORE)."""
    try:
        address = parse_address(buf, 0)
    except SocksProtocolError as exc:
        raise TrojanProtocolError(f"UDP frame: {exc}") from None
    if address is None:
        return None
    host, port, end = address
    if len(buf) < end + 4:
        return None
    (length,) = struct.unpack_from("!H", buf, end)
    if buf[end + 2 : end + 4] != CRLF:
        raise TrojanProtocolError("UDP frame: no CRLF after the length")
    start = end + 4
    if len(buf) < start + length:
        return None
    return (host, port, bytes(buf[start : start + length])), start + length


class UdpFrameDecoder:
    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[Host, int, bytes]]:
        self._buf += data
        frames: list[tuple[Host, int, bytes]] = []
        while True:
            parsed = parse_udp_frame(bytes(self._buf))
            if parsed is None:
                if len(self._buf) > MAX_BUFFER:
                    raise TrojanProtocolError("UDP frame buffer over its bound")
                return frames
            frame, used = parsed
            del self._buf[:used]
            frames.append(frame)
