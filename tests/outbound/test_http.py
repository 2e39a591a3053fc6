"""The http outbound against a scripted CONNECT proxy over loopback."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import pytest
import trio

from trio_tproxy.config import HttpOutbound as HttpConfig
from trio_tproxy.config.values import HostPort
from trio_tproxy.outbound import DialError, HttpOutbound
from trio_tproxy.outbound.base import datagram_capable
from trio_tproxy.relay import send_all

from .fakes import FakeHttpProxy, context, make_flow, recv_exactly, run_flow

Pairs = Callable[[], tuple[socket.socket, socket.socket]]
DST = (ipaddress.IPv4Address("192.0.2.80"), 443)


def outbound(port: int, user: str | None = None, password: str | None = None) -> HttpOutbound:
    return HttpOutbound(HttpConfig(tag="web", server=HostPort("127.0.0.1", port),
                                   username=user, password=password))  # fmt: skip


async def test_tunnel_by_domain_with_basic_auth(tcp_pairs: Pairs) -> None:
    app, proxy_side = tcp_pairs()
    proxy = FakeHttpProxy(response=b"HTTP/1.1 200 Connection established\r\n\r\nSSH-2.0-x\r\n")
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        flow = make_flow(proxy_side, DST, domain="www.example.com", prefix=b"hello")
        nursery.start_soon(run_flow, outbound(proxy.port, "Aladdin", "open sesame"), flow)
        assert await recv_exactly(app, 11) == b"SSH-2.0-x\r\n"  # bytes after the head
        assert await recv_exactly(app, 5) == b"hello"  # the prefix went through the tunnel
        await send_all(app, b"!")
        assert await recv_exactly(app, 1) == b"!"
        nursery.cancel_scope.cancel()
    assert proxy.requests == [
        b"CONNECT www.example.com:443 HTTP/1.1\r\nHost: www.example.com:443\r\n"
        b"Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n"
        b"Proxy-Connection: Keep-Alive\r\n\r\n"
    ]


async def test_tunnel_by_ip(tcp_pairs: Pairs) -> None:
    app, proxy_side = tcp_pairs()
    proxy = FakeHttpProxy()
    dst = (ipaddress.IPv6Address("2001:db8::1"), 8443)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        nursery.start_soon(run_flow, outbound(proxy.port), make_flow(proxy_side, dst))
        await send_all(app, b"x")
        assert await recv_exactly(app, 1) == b"x"
        nursery.cancel_scope.cancel()
    assert proxy.requests[0].startswith(b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n")
    assert b"Proxy-Authorization" not in proxy.requests[0]


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
            "CONNECT 192.0.2.80:443 refused: 407 Proxy Authentication Required",
        ),
        (
            b"HTTP/1.0 403 Access violation\r\n\r\n",
            "CONNECT 192.0.2.80:443 refused: 403 Access violation",
        ),
        (b"HTTP/1.1 301 Moved\r\nLocation: x\r\n\r\n", "CONNECT 192.0.2.80:443 refused: 301 Moved"),
        (b"HTTP/1.1 502\r\n\r\n", "CONNECT 192.0.2.80:443 refused: 502"),
        (b"SSH-2.0-OpenSSH\r\n", "bad reply: not an HTTP response (starts with b'SSH-2.0')"),
        (b"HTTP/1.1 200 OK\r\n", "closed the connection during the handshake"),
    ],
)
async def test_refusals(tcp_pairs: Pairs, response: bytes, message: str) -> None:
    _, proxy_side = tcp_pairs()
    proxy = FakeHttpProxy(response=response)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        with pytest.raises(DialError) as info:
            await run_flow(outbound(proxy.port), make_flow(proxy_side, DST))
        nursery.cancel_scope.cancel()
    assert str(info.value) == f"http proxy 127.0.0.1:{proxy.port}: {message}"


async def test_silent_proxy_costs_the_handshake_timeout(tcp_pairs: Pairs) -> None:
    _, proxy_side = tcp_pairs()
    proxy = FakeHttpProxy(silent=True)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.run)
        start = trio.current_time()
        with pytest.raises(DialError, match=r"no answer within 0\.3s \(policy\.handshake\)$"):
            await run_flow(outbound(proxy.port), make_flow(proxy_side, DST, ctx=context(0.3)))
        assert 0.3 <= trio.current_time() - start < 2.0
        nursery.cancel_scope.cancel()


def test_http_has_no_udp() -> None:
    # the UDP session table refuses (and logs) flows to outbounds without open_udp
    assert datagram_capable(outbound(3128)) is None
