"""udp/upstream.py on loopback: a concrete source address, full-cone receive, drops."""

from __future__ import annotations

import socket

import pytest
import trio

from trio_tproxy.dial import DialError
from trio_tproxy.outbound.udp_socket import SocketLink, open_upstream, route_source


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_bound_to_the_route_source_and_full_cone(host: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    a = socket.socket(family, socket.SOCK_DGRAM)
    b = socket.socket(family, socket.SOCK_DGRAM)
    a.bind((host, 0))
    b.bind((host, 0))
    sock = open_upstream((host, a.getsockname()[1]), mark=0)
    local = sock.getsockname()
    assert local[0] == host and local[1] != 0  # never the wildcard address
    assert route_source((host, 9), mark=0) == host
    link = SocketLink(sock, bytearray(65536))
    assert link.send(memoryview(b"ping"), (host, a.getsockname()[1]), None) is None
    data, peer = a.recvfrom(100)
    assert data == b"ping"
    got: list[tuple[bytes, tuple[str, int]]] = []
    both = trio.Event()

    def deliver(payload: memoryview, remote: tuple[str, int]) -> None:
        got.append((bytes(payload), remote))
        if len(got) == 2:
            both.set()

    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.receive, deliver)
            a.sendto(b"from a", peer)
            b.sendto(b"from b, never addressed", peer)  # full cone: accepted too
            await both.wait()
            link.close()  # receive() returns once its socket is closed
    assert got == [(b"from a", (host, a.getsockname()[1])),
                   (b"from b, never addressed", (host, b.getsockname()[1]))]  # fmt: skip
    a.close()
    b.close()


def test_an_unreachable_destination_is_a_dial_error() -> None:
    # connect() to a broadcast address without SO_BROADCAST fails on every host, which
    # is the route lookup failing as it does for an unreachable network.
    with pytest.raises(DialError, match=r"cannot reach 255\.255\.255\.255:9: Permission denied"):
        open_upstream(("255.255.255.255", 9), mark=0)


async def test_send_errors_are_reasons_not_exceptions() -> None:
    sock = open_upstream(("127.0.0.1", 9), mark=0)
    link = SocketLink(sock, bytearray(16))
    assert link.send(memoryview(b"x" * 70000), ("127.0.0.1", 9), None) == "Message too long"
    link.close()
    link.close()  # idempotent
