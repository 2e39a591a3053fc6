"""SOCKS5 UDP ASSOCIATE links against a scripted server with a real UDP relay on
loopback: encapsulation, replies mapped to what the client addressed, what is dropped,
and how a link ends."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import AsyncIterator

import pytest
import trio

from trio_tproxy.addr import Endpoint
from trio_tproxy.config import SocksOutbound as SocksConfig
from trio_tproxy.config.values import HostPort
from trio_tproxy.inbound.sockopt import SO_MARK
from trio_tproxy.outbound import DialError, SocksOutbound
from trio_tproxy.outbound.base import UdpRequest, datagram_capable
from trio_tproxy.outbound.socks_udp import SocksUdpLink

from .fakes import FakeResolver, FakeSocksServer, wait_until

CLIENT: Endpoint = ("10.0.0.2", 40000)
DNS: Endpoint = ("192.0.2.53", 53)


class Link:
    """A link with its receive loop running, collecting (payload, remote) replies."""

    def __init__(self, link: SocksUdpLink, server: FakeSocksServer) -> None:
        self.link = link
        self.server = server
        self.replies: list[tuple[bytes, Endpoint]] = []
        self.ended: BaseException | None = None
        self.done = trio.Event()

    def deliver(self, payload: memoryview, remote: Endpoint) -> None:
        self.replies.append((bytes(payload), remote))

    async def run(self) -> None:
        try:
            await self.link.receive(self.deliver)
        except OSError as exc:
            self.ended = exc
        finally:
            self.done.set()

    def send(self, payload: bytes, dst: Endpoint, domain: str | None = None) -> str | None:
        return self.link.send(memoryview(payload), dst, domain)

    async def wait_replies(self, n: int) -> None:
        await wait_until(lambda: len(self.replies) >= n)


def outbound(port: int, mark: int = 0) -> SocksOutbound:
    cfg = SocksConfig(tag="proxy", server=HostPort("127.0.0.1", port), mark=mark)
    return SocksOutbound(cfg, FakeResolver())


async def open_link(nursery: trio.Nursery, server: FakeSocksServer, mark: int = 0) -> Link:
    if not server.port:
        await nursery.start(server.run)
    ob = datagram_capable(outbound(server.port, mark))
    assert ob is not None
    request = UdpRequest(CLIENT, DNS, bytearray(65536), 5.0)
    link = await ob.open_udp(request)
    assert isinstance(link, SocksUdpLink)
    running = Link(link, server)
    nursery.start_soon(running.run)
    return running


@pytest.fixture
async def nursery_() -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        yield nursery
        nursery.cancel_scope.cancel()


async def test_encapsulation_and_replies(nursery_: trio.Nursery) -> None:
    h = await open_link(nursery_, FakeSocksServer())
    assert h.send(b"v4", DNS) is None
    assert h.send(b"v6", ("2001:db8::53", 53)) is None
    await h.wait_replies(2)
    assert h.server.udp_seen == [
        b"\x00\x00\x00\x01\xc0\x00\x02\x35\x00\x35v4",  # IP text goes as ATYP 1, not a name
        b"\x00\x00\x00\x04" + ipaddress.IPv6Address("2001:db8::53").packed + b"\x00\x35v6",
    ]
    assert h.replies == [(b"v4", DNS), (b"v6", ("2001:db8::53", 53))]
    (req,) = h.server.requests
    assert req.command == 3 and req.address_bytes == b"\x01\x00\x00\x00\x00\x00\x00"
    assert h.link.counters.sent == 2 and h.link.counters.received == 2


async def test_a_name_goes_to_the_proxy_and_its_reply_comes_from_what_the_client_addressed(
    nursery_: trio.Nursery,
) -> None:
    quic: Endpoint = ("198.51.100.7", 443)  # what the client dialled, SNI www.example.com
    server = FakeSocksServer(answer_as={"www.example.com": ipaddress.IPv4Address("203.0.113.9")})
    h = await open_link(nursery_, server)
    h.send(b"initial", quic, domain="www.example.com")
    h.send(b"named reply", ("198.51.100.8", 853), domain="dot.example")  # echoed by name
    await h.wait_replies(2)
    assert server.udp_seen[0] == b"\x00\x00\x00\x03\x0fwww.example.com\x01\xbbinitial"
    # the relay answered from the resolved 203.0.113.9, and as "dot.example": the
    # client sees both from the addresses it sent to
    assert h.replies == [(b"initial", quic), (b"named reply", ("198.51.100.8", 853))]


async def test_fragments_and_garbage_are_dropped(nursery_: trio.Nursery) -> None:
    fragment = b"\x00\x00\x01\x01\xc0\x00\x02\x35\x00\x35part"
    unknown_name = b"\x00\x00\x00\x03\x05other\x00\x35who"
    h = await open_link(nursery_, FakeSocksServer(udp_extra=[fragment, b"\x07\x07", unknown_name]))
    h.send(b"q", DNS)
    await h.wait_replies(1)
    await trio.sleep(0.05)
    assert h.replies == [(b"q", DNS)]
    c = h.link.counters
    assert (c.fragments, c.malformed, c.received) == (1, 2, 1)


async def test_unspecified_relay_address_means_the_proxy(nursery_: trio.Nursery) -> None:
    h = await open_link(nursery_, FakeSocksServer(relay_host=ipaddress.IPv4Address(0)))
    assert str(h.link.relay[0]) == "127.0.0.1"
    h.send(b"q", DNS)
    await h.wait_replies(1)


async def test_proxy_closing_the_control_connection_ends_the_link(nursery_: trio.Nursery) -> None:
    h = await open_link(nursery_, FakeSocksServer())
    h.send(b"q", DNS)
    await h.wait_replies(1)
    await h.server.close_controls()
    with trio.fail_after(10):
        await h.done.wait()
    assert isinstance(h.ended, DialError)
    assert str(h.ended) == (
        f"socks proxy 127.0.0.1:{h.server.port}: the proxy closed the control connection"
    )
    h.link.close()
    assert h.send(b"late", DNS) == "association closed"


async def test_close_ends_receive_quietly_and_the_proxy_sees_it(nursery_: trio.Nursery) -> None:
    h = await open_link(nursery_, FakeSocksServer())
    await wait_until(lambda: len(h.server.controls) == 1)
    (control,) = h.server.controls
    h.link.close()
    with trio.fail_after(10):
        await h.done.wait()
        assert await control.receive_some(10) == b""
    assert h.ended is None
    h.link.close()  # idempotent


async def test_each_link_is_its_own_association(nursery_: trio.Nursery) -> None:
    server = FakeSocksServer()
    a = await open_link(nursery_, server)
    b = await open_link(nursery_, server)
    a.send(b"a", DNS)
    b.send(b"b", DNS)
    await a.wait_replies(1)
    await b.wait_replies(1)
    assert (a.replies, b.replies) == ([(b"a", DNS)], [(b"b", DNS)])
    assert len(server.requests) == 2 and a.link.relay == b.link.relay


@pytest.mark.parametrize(("fake", "message"), [
    (FakeSocksServer(reply=7), "UDP ASSOCIATE 0.0.0.0:0 failed: command not supported (reply 7)"),
    (FakeSocksServer(reply=2), "UDP ASSOCIATE 0.0.0.0:0 failed: connection not allowed by ruleset (reply 2)"),
])  # fmt: skip
async def test_refused_associate(
    nursery_: trio.Nursery, fake: FakeSocksServer, message: str
) -> None:
    with pytest.raises(DialError) as info:
        await open_link(nursery_, fake)
    assert str(info.value) == f"socks proxy 127.0.0.1:{fake.port}: {message}"


async def test_sockets_carry_the_mark_and_keepalive(nursery_: trio.Nursery) -> None:
    if os.geteuid() != 0:
        pytest.skip("SO_MARK needs CAP_NET_ADMIN")
    h = await open_link(nursery_, FakeSocksServer(), mark=99)
    assert h.link.udp.getsockopt(socket.SOL_SOCKET, SO_MARK) == 99
    assert h.link.control.getsockopt(socket.SOL_SOCKET, SO_MARK) == 99
    assert h.link.control.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
