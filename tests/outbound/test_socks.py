"""The socks outbound's CONNECT against a scripted SOCKS5 server over loopback: the
bytes it sends, what reaches the client, and how each failure is reported."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import pytest
import trio

from trio_tproxy.config import SocksOutbound as SocksConfig
from trio_tproxy.config.values import HostPort
from trio_tproxy.outbound import DialError, SocksOutbound
from trio_tproxy.relay import send_all

from .fakes import FakeResolver, FakeSocksServer, context, make_flow, recv_exactly, run_flow

Pairs = Callable[[], tuple[socket.socket, socket.socket]]
DST = (ipaddress.IPv4Address("192.0.2.80"), 443)


def outbound(port: int, user: str | None = None, password: str | None = None,
             host: str = "127.0.0.1") -> SocksOutbound:  # fmt: skip
    return SocksOutbound(SocksConfig(tag="proxy", server=HostPort(host, port),
                                     username=user, password=password))  # fmt: skip


async def start(nursery: trio.Nursery, server: FakeSocksServer) -> FakeSocksServer:
    await nursery.start(server.run)
    return server


async def test_connect_by_domain_with_prefix_and_early_bytes(tcp_pairs: Pairs) -> None:
    app, proxy_side = tcp_pairs()
    async with trio.open_nursery() as nursery:
        server = await start(nursery, FakeSocksServer(early=b"220 banner\r\n"))
        flow = make_flow(proxy_side, DST, domain="www.example.com", prefix=b"GET / HTTP/1.1\r\n")
        nursery.start_soon(run_flow, outbound(server.port), flow)
        # what the proxy sent first reaches the client first, then the echoed prefix
        assert await recv_exactly(app, 12) == b"220 banner\r\n"
        assert await recv_exactly(app, 16) == b"GET / HTTP/1.1\r\n"
        await send_all(app, b"more")
        assert await recv_exactly(app, 4) == b"more"
        app.shutdown(socket.SHUT_WR)
        assert await recv_exactly(app, 1) == b""  # the half-close went round the echo
        nursery.cancel_scope.cancel()
    (req,) = server.requests
    assert req.greeting == b"\x05\x01\x00"
    assert req.command == 1
    # ATYP 3: the proxy resolves the sniffed name
    assert req.address_bytes == b"\x03\x0fwww.example.com\x01\xbb"
    assert flow.stats.up == 16 + 4 and flow.stats.down == 12 + 16 + 4


@pytest.mark.parametrize(
    ("dst", "wire"),
    [
        (DST, b"\x01\xc0\x00\x02\x50\x01\xbb"),
        (
            (ipaddress.IPv6Address("2001:db8::5"), 22),
            b"\x04" + ipaddress.IPv6Address("2001:db8::5").packed + b"\x00\x16",
        ),
    ],
)
async def test_connect_by_ip_without_domain(tcp_pairs: Pairs, dst: object, wire: bytes) -> None:
    app, proxy_side = tcp_pairs()
    async with trio.open_nursery() as nursery:
        server = await start(nursery, FakeSocksServer())
        nursery.start_soon(run_flow, outbound(server.port), make_flow(proxy_side, dst))  # type: ignore[arg-type]
        await send_all(app, b"x")
        assert await recv_exactly(app, 1) == b"x"
        nursery.cancel_scope.cancel()
    assert server.requests[0].address_bytes == wire


async def test_username_password(tcp_pairs: Pairs) -> None:
    app, proxy_side = tcp_pairs()
    async with trio.open_nursery() as nursery:
        server = await start(nursery, FakeSocksServer(method=2))
        nursery.start_soon(run_flow, outbound(server.port, "alice", "s3cret"),
                           make_flow(proxy_side, DST))  # fmt: skip
        await send_all(app, b"x")
        assert await recv_exactly(app, 1) == b"x"
        nursery.cancel_scope.cancel()
    (req,) = server.requests
    assert req.greeting == b"\x05\x02\x00\x02"  # both offered
    assert req.auth == b"\x01\x05alice\x06s3cret"


async def test_credentials_unused_when_the_proxy_wants_none(tcp_pairs: Pairs) -> None:
    app, proxy_side = tcp_pairs()
    async with trio.open_nursery() as nursery:
        server = await start(nursery, FakeSocksServer(method=0))
        nursery.start_soon(run_flow, outbound(server.port, "alice", "pw"),
                           make_flow(proxy_side, DST))  # fmt: skip
        await send_all(app, b"x")
        assert await recv_exactly(app, 1) == b"x"
        nursery.cancel_scope.cancel()
    assert server.requests[0].auth == b""


async def fail(tcp_pairs: Pairs, server: FakeSocksServer, ob: Callable[[int], SocksOutbound],
               handshake: float = 5.0, domain: str | None = None) -> tuple[str, float]:  # fmt: skip
    _, proxy_side = tcp_pairs()
    async with trio.open_nursery() as nursery:
        await nursery.start(server.run)
        start_time = trio.current_time()
        with pytest.raises(DialError) as info:
            await run_flow(
                ob(server.port), make_flow(proxy_side, DST, domain=domain, ctx=context(handshake))
            )
        nursery.cancel_scope.cancel()
    return str(info.value), trio.current_time() - start_time


async def test_auth_failure(tcp_pairs: Pairs) -> None:
    msg, _ = await fail(tcp_pairs, FakeSocksServer(method=2, auth_ok=False),
                        lambda port: outbound(port, "alice", "wrong"))  # fmt: skip
    assert msg.endswith(": authentication failed for user 'alice' (RFC 1929 status 1)")
    assert msg.startswith("socks proxy 127.0.0.1:")


async def test_no_acceptable_method(tcp_pairs: Pairs) -> None:
    msg, _ = await fail(tcp_pairs, FakeSocksServer(method=0xFF), outbound)
    assert msg.endswith(": refuses no authentication (set username and password?)")
    msg, _ = await fail(tcp_pairs, FakeSocksServer(method=0xFF),
                        lambda port: outbound(port, "a", "b"))  # fmt: skip
    assert msg.endswith(": refuses no authentication or username/password")


async def test_method_not_offered(tcp_pairs: Pairs) -> None:
    msg, _ = await fail(tcp_pairs, FakeSocksServer(method=2), outbound)
    assert msg.endswith(": chose method 0x02, not offered")


@pytest.mark.parametrize(
    ("code", "text"),
    [(1, "general SOCKS server failure"), (2, "connection not allowed by ruleset"),
     (3, "network unreachable"), (4, "host unreachable"), (5, "connection refused"),
     (6, "TTL expired"), (7, "command not supported"), (8, "address type not supported"),
     (9, "unassigned code")],
)  # fmt: skip
async def test_reply_codes(tcp_pairs: Pairs, code: int, text: str) -> None:
    msg, _ = await fail(tcp_pairs, FakeSocksServer(reply=code), outbound, domain="example.org")
    assert msg.endswith(f": CONNECT example.org:443 failed: {text} (reply {code})")


async def test_silent_proxy_costs_the_handshake_timeout(tcp_pairs: Pairs) -> None:
    msg, elapsed = await fail(tcp_pairs, FakeSocksServer(silent=True), outbound, handshake=0.3)
    assert msg.endswith(": no answer within 0.3s (policy.handshake)")
    assert 0.3 <= elapsed < 2.0


async def test_proxy_down(tcp_pairs: Pairs) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    _, proxy_side = tcp_pairs()
    with pytest.raises(DialError) as info:
        await run_flow(outbound(port), make_flow(proxy_side, DST))
    assert str(info.value) == (
        f"socks proxy 127.0.0.1:{port}: connect to 127.0.0.1:{port} failed: Connection refused"
    )


async def test_proxy_given_by_name_is_resolved(tcp_pairs: Pairs) -> None:
    app, proxy_side = tcp_pairs()
    resolver = FakeResolver({"proxy.lan": [ipaddress.IPv4Address("127.0.0.1")]})
    async with trio.open_nursery() as nursery:
        server = await start(nursery, FakeSocksServer())
        flow = make_flow(proxy_side, DST)
        nursery.start_soon(run_flow, outbound(server.port, host="proxy.lan"), flow, resolver)
        await send_all(app, b"x")
        assert await recv_exactly(app, 1) == b"x"
        nursery.cancel_scope.cancel()
    assert resolver.asked == ["proxy.lan"]


async def test_not_a_socks_server(tcp_pairs: Pairs) -> None:
    _, proxy_side = tcp_pairs()
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]

        async def http_server(stream: trio.SocketStream) -> None:
            await stream.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")

        await nursery.start(trio.serve_listeners, http_server, listeners)
        with pytest.raises(
            DialError, match=r"bad reply: not a SOCKS5 server \(version byte 0x48\)"
        ):
            await run_flow(outbound(port), make_flow(proxy_side, DST))
        nursery.cancel_scope.cancel()


async def test_upstream_socket_carries_the_mark(tcp_pairs: Pairs) -> None:
    import os

    if os.geteuid() != 0:
        pytest.skip("SO_MARK needs CAP_NET_ADMIN")
    from trio_tproxy.inbound.sockopt import SO_MARK
    from trio_tproxy.outbound.socks import SocksServer, socks_open

    async with trio.open_nursery() as nursery:
        server = await start(nursery, FakeSocksServer())
        cfg = SocksConfig(tag="p", server=HostPort("127.0.0.1", server.port), mark=0x1234)
        sock, _, _ = await socks_open(SocksServer.from_config(cfg), 1, DST[0], 443,
                                      resolver=FakeResolver(), timeout=5)  # fmt: skip
        with sock:
            assert sock.getsockopt(socket.SOL_SOCKET, SO_MARK) == 0x1234
        nursery.cancel_scope.cancel()
