"""inbound/udp.py: the original destination control messages, byte by byte."""

from __future__ import annotations

import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from trio_tproxy.inbound.udp import (
    IP_ORIGDSTADDR,
    IPV6_ORIGDSTADDR,
    endpoint_of,
    parse_original_dst,
)


def sockaddr_in(ip: str, port: int) -> bytes:
    return struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + socket.inet_aton(ip) + bytes(8)


def sockaddr_in6(ip: str, port: int) -> bytes:
    return (struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0)
            + socket.inet_pton(socket.AF_INET6, ip) + struct.pack("=I", 0))


def test_ipv4() -> None:
    cmsg = (socket.SOL_IP, IP_ORIGDSTADDR, sockaddr_in("10.77.2.2", 53))
    assert parse_original_dst([cmsg]) == ("10.77.2.2", 53)


def test_ipv6_and_mapped_ipv4() -> None:
    cmsg = (socket.IPPROTO_IPV6, IPV6_ORIGDSTADDR, sockaddr_in6("fd77:2::2", 443))
    assert parse_original_dst([cmsg]) == ("fd77:2::2", 443)
    mapped = (socket.IPPROTO_IPV6, IPV6_ORIGDSTADDR, sockaddr_in6("::ffff:10.0.0.1", 1))
    assert parse_original_dst([mapped]) == ("10.0.0.1", 1)


def test_other_or_short_messages_are_ignored() -> None:
    assert parse_original_dst([]) is None
    assert parse_original_dst([(socket.SOL_IP, IP_ORIGDSTADDR, b"\x02\x00\x005")]) is None
    assert parse_original_dst([(socket.SOL_SOCKET, 29, bytes(16))]) is None  # a timestamp
    good = (socket.SOL_IP, IP_ORIGDSTADDR, sockaddr_in("192.0.2.1", 7))
    assert parse_original_dst([(socket.SOL_SOCKET, 29, bytes(16)), good]) == ("192.0.2.1", 7)


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 100), st.binary(max_size=40)),
                max_size=3))  # fmt: skip
def test_garbage_never_raises(ancdata: list[tuple[int, int, bytes]]) -> None:
    result = parse_original_dst(ancdata)
    assert result is None or isinstance(result[1], int)


def test_endpoint_of() -> None:
    assert endpoint_of(("::ffff:10.77.1.2", 5000, 0, 0)) == ("10.77.1.2", 5000)
    assert endpoint_of(("10.77.1.2", 5000)) == ("10.77.1.2", 5000)
    assert endpoint_of(("fd77:1::2", 5000, 0, 0)) == ("fd77:1::2", 5000)
    assert endpoint_of(("::ffff:0:102:304", 1, 0, 0)) == ("::ffff:0:102:304", 1)  # not mapped
