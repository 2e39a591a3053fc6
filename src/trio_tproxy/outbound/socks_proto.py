"""SOCKS5 messages (RFC 1928) and username/password authentication (RFC 1929), sans-IO.

Encoders build exact bytes. Parsers follow the h11 reader contract: they take the bytes
received so far and return ``(message, bytes consumed)``, or ``None`` when a valid
prefix needs more bytes, or raise :class:`SocksProtocolError` for anything a SOCKS5
server must not send. Consumed counts matter: a proxy may send tunnel data right
behind its CONNECT reply, and those bytes belong to the client.

UDP datagrams (RFC 1928 §7) always arrive whole, so :func:`parse_udp` has no "need
more" outcome.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Sequence

import attrs

from ..addr import IPAddress

# Spelled out rather than imported from inbound.sockopt, which imports socket: this
# module stays pure.

VERSION = 5
AUTH_VERSION = 1  # RFC 1929 subnegotiation version

METHOD_NO_AUTH = 0x00
METHOD_USERPASS = 0x02
METHOD_NONE_ACCEPTABLE = 0xFF

CMD_CONNECT = 1
CMD_UDP_ASSOCIATE = 3

ATYP_IPV4 = 1
ATYP_DOMAIN = 3
ATYP_IPV6 = 4

REPLY_SUCCEEDED = 0
# RFC 1928 §6, worded as a log line's tail.
REPLY_TEXT = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}
METHOD_TEXT = {METHOD_NO_AUTH: "no authentication", METHOD_USERPASS: "username/password"}
COMMAND_TEXT = {CMD_CONNECT: "CONNECT", CMD_UDP_ASSOCIATE: "UDP ASSOCIATE"}

MAX_FIELD = 255  # one length octet: domain names, RFC 1929 user names and passwords

Host = IPAddress | str  # an IP, or a domain name (sent as ATYP 3, resolved by the proxy)


class SocksProtocolError(ValueError):
    """The peer sent something no SOCKS5 server may send; ``str()`` says what."""


@attrs.frozen
class Reply:
    """A request's reply: ``code`` 0 is success; ``host``/``port`` are BND.ADDR/BND.PORT."""

    code: int
    host: Host
    port: int

    @property
    def text(self) -> str:
        return "succeeded" if self.code == 0 else REPLY_TEXT.get(self.code, "unassigned code")


@attrs.frozen
class UdpDatagram:
    frag: int  # 0 = a whole datagram; anything else is a fragment (we never reassemble)
    host: Host
    port: int
    payload: bytes


def show_host(host: Host, port: int) -> str:
    if isinstance(host, ipaddress.IPv6Address):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def encode_greeting(methods: Sequence[int]) -> bytes:
    if not 1 <= len(methods) <= MAX_FIELD:
        raise ValueError("a greeting offers 1 to 255 methods")
    return bytes([VERSION, len(methods), *methods])


def parse_method_choice(buf: bytes) -> tuple[int, int] | None:
    """The server's chosen method (possibly METHOD_NONE_ACCEPTABLE)."""
    if len(buf) < 2:
        return None
    if buf[0] != VERSION:
        raise SocksProtocolError(f"not a SOCKS5 server (version byte {buf[0]:#04x})")
    return buf[1], 2


def encode_userpass(username: str, password: str) -> bytes:
    """RFC 1929 request; both fields are 1-255 bytes (UTF-8)."""
    user, secret = username.encode(), password.encode()
    for name, value in (("username", user), ("password", secret)):
        if not 1 <= len(value) <= MAX_FIELD:
            raise ValueError(f"SOCKS5 {name} must be 1-255 bytes (RFC 1929), got {len(value)}")
    return bytes([AUTH_VERSION, len(user)]) + user + bytes([len(secret)]) + secret


def parse_auth_status(buf: bytes) -> tuple[int, int] | None:
    """RFC 1929 status: 0 = success, anything else = failure."""
    if len(buf) < 2:
        return None
    # RFC 1929 says version 1; some servers echo 5 here. Both are unambiguous.
    if buf[0] not in (AUTH_VERSION, VERSION):
        raise SocksProtocolError(f"bad authentication reply version {buf[0]:#04x}")
    return buf[1], 2


def encode_address(host: Host, port: int) -> bytes:
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    if isinstance(host, ipaddress.IPv4Address):
        return bytes([ATYP_IPV4]) + host.packed + struct.pack("!H", port)
    if isinstance(host, ipaddress.IPv6Address):
        return bytes([ATYP_IPV6]) + host.packed + struct.pack("!H", port)
    name = host.encode("ascii")  # sniffed domains are already ASCII (punycode)
    if not 1 <= len(name) <= MAX_FIELD:
        raise ValueError(f"domain of {len(name)} bytes does not fit SOCKS5 (1-255)")
    return bytes([ATYP_DOMAIN, len(name)]) + name + struct.pack("!H", port)


def parse_address(buf: bytes | memoryview, offset: int) -> tuple[Host, int, int] | None:
    """ATYP, address and port at ``offset``: ``(host, port, end offset)``."""
    if len(buf) <= offset:
        return None
    atyp = buf[offset]
    start = offset + 1
    host: Host
    if atyp == ATYP_IPV4:
        end = start + 4
        if len(buf) < end + 2:
            return None
        host = ipaddress.IPv4Address(bytes(buf[start:end]))
    elif atyp == ATYP_IPV6:
        end = start + 16
        if len(buf) < end + 2:
            return None
        host = ipaddress.IPv6Address(bytes(buf[start:end]))
    elif atyp == ATYP_DOMAIN:
        if len(buf) <= start:
            return None
        length = buf[start]
        end = start + 1 + length
        if len(buf) < end + 2:
            return None
        if length == 0:
            raise SocksProtocolError("empty domain name in address")
        try:
            host = bytes(buf[start + 1 : end]).decode("ascii")
        except UnicodeDecodeError:
            raise SocksProtocolError("non-ASCII domain name in address") from None
    else:
        raise SocksProtocolError(f"unknown address type {atyp}")
    (port,) = struct.unpack_from("!H", buf, end)
    return host, port, end + 2


def encode_request(command: int, host: Host, port: int) -> bytes:
    return bytes([VERSION, command, 0]) + encode_address(host, port)


def parse_reply(buf: bytes) -> tuple[Reply, int] | None:
    if len(buf) < 4:
        # Judge the version as soon as it is there: a non-SOCKS peer must fail fast.
        if buf and buf[0] != VERSION:
            raise SocksProtocolError(f"bad reply version {buf[0]:#04x}")
        return None
    if buf[0] != VERSION:
        raise SocksProtocolError(f"bad reply version {buf[0]:#04x}")
    address = parse_address(buf, 3)
    if address is None:
        return None
    host, port, end = address
    return Reply(buf[1], host, port), end


def encode_udp(host: Host, port: int, payload: bytes | memoryview) -> bytes:
    """RFC 1928 §7: RSV (2 zero bytes), FRAG 0, the destination, then the payload."""
    return b"\x00\x00\x00" + encode_address(host, port) + payload


def parse_udp_header(datagram: bytes | memoryview) -> tuple[int, Host, int, int]:
    """``(frag, host, port, header length)``: the payload is ``datagram[length:]``."""
    if len(datagram) < 4:
        raise SocksProtocolError(f"UDP header truncated ({len(datagram)} bytes)")
    if datagram[0] or datagram[1]:
        raise SocksProtocolError("UDP header reserved bytes are not zero")
    address = parse_address(datagram, 3)
    if address is None:
        raise SocksProtocolError("UDP header truncated")
    host, port, end = address
    return datagram[2], host, port, end


def parse_udp(datagram: bytes) -> UdpDatagram:
    frag, host, port, end = parse_udp_header(datagram)
    return UdpDatagram(frag, host, port, datagram[end:])
