"""The shadowsocks outbound against real servers on loopback: ss-server for the AEAD
methods, sing-box for the 2022 methods; TCP and UDP, by IP and by name, and the ways a
flow must fail fast (wrong key, dead or silent server, tampered or stale answers)."""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_tproxy import relay
from trio_tproxy.config import ShadowsocksOutbound as ShadowsocksConfig
from trio_tproxy.config.values import HostPort
from trio_tproxy.dial import DialError
from trio_tproxy.outbound import shadowsocks_packet as packets
from trio_tproxy.outbound import shadowsocks_proto as proto
from trio_tproxy.outbound.shadowsocks import ShadowsocksOutbound, ShadowsocksStream
from trio_tproxy.outbound.shadowsocks_decoder import Decryptor, RequestDecoder
from trio_tproxy.outbound.socks_proto import encode_address
from trio_tproxy.relay_stream import relay_stream
from trio_tproxy.upstreams import Destination, StreamUpstream, UdpRequest

from .upstream_servers import (
    AEAD_METHODS,
    METHODS_2022,
    EchoServers,
    key_2022,
    needs_sing_box,
    needs_ss_server,
    sing_box,
    ss_server,
)

LOCALHOST = ipaddress.ip_address("127.0.0.1")


@pytest.fixture
def echo() -> Iterator[EchoServers]:
    servers = EchoServers()
    yield servers
    servers.close()


def outbound(method: str, password: str, port: int, *, host: str = "127.0.0.1",
             network: tuple[str, ...] = ("tcp", "udp")) -> ShadowsocksOutbound:  # fmt: skip
    cfg = ShadowsocksConfig(tag="ss", server=HostPort(host, port), method=method,  # type: ignore[arg-type]
                            password=password, network=network)  # type: ignore[arg-type]  # fmt: skip
    return ShadowsocksOutbound(cfg)


async def open_stream(ob: ShadowsocksOutbound, port: int, *, domain: str | None = None,
                      initial: bytes = b"", timeout: float = 5.0) -> ShadowsocksStream:  # noqa: ASYNC109 # fmt: skip
    up = await ob.open_stream(Destination((LOCALHOST, port), domain), timeout=timeout,
                              initial=initial)  # fmt: skip
    assert isinstance(up, StreamUpstream) and up.chain == ("ss",)
    assert isinstance(up.stream, ShadowsocksStream)
    return up.stream


async def exchange(stream: ShadowsocksStream, data: bytes, already: int = 0) -> bytes:
    """Send ``data`` and read back ``already + len(data)`` bytes (an echo)."""
    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, data)
        while len(got) < already + len(data):
            chunk = await stream.receive_some(65536)
            assert chunk, "closed early"
            got += chunk
    return bytes(got)


async def tcp_round_trip(ob: ShadowsocksOutbound, echo: EchoServers, domain: str | None) -> None:
    stream = await open_stream(ob, echo.tcp_port, domain=domain, initial=b"first bytes")
    try:
        payload = os.urandom(1_500_000)  # many chunks both ways
        got = await exchange(stream, payload, already=len(b"first bytes"))
        assert got == b"first bytes" + payload
    finally:
        stream.close()


async def udp_round_trip(ob: ShadowsocksOutbound, echo: EchoServers) -> None:
    dst = ("127.0.0.1", echo.udp_port)
    link = await ob.open_udp(UdpRequest(("127.0.0.1", 40000), dst, bytearray(65536), 5.0))
    got: list[tuple[bytes, tuple[str, int]]] = []
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.receive, lambda p, r: got.append((bytes(p), r)))
            for i in range(3):
                assert link.send(memoryview(b"ping %d" % i), dst, None) is None
                await trio.sleep(0.05)
            # by name: the reply comes back from the address the client addressed
            assert link.send(memoryview(b"by name"), dst, "localhost") is None
            while len(got) < 4:  # noqa: ASYNC110 - bounded by move_on_after
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    link.close()
    assert sorted(got) == sorted([(b"ping %d" % i, dst) for i in range(3)] + [(b"by name", dst)])
    assert link.counters.received == 4


@needs_ss_server
@pytest.mark.parametrize("method", AEAD_METHODS)
@pytest.mark.parametrize("domain", [None, "localhost"])
async def test_aead_tcp_through_ss_server(method: str, domain: str | None, echo: EchoServers,
                                          tmp_path: Path) -> None:  # fmt: skip
    with ss_server(method, "secret", tmp_path) as port:
        await tcp_round_trip(outbound(method, "secret", port), echo, domain)


@needs_ss_server
@pytest.mark.parametrize("method", AEAD_METHODS)
async def test_aead_udp_through_ss_server(method: str, echo: EchoServers, tmp_path: Path) -> None:
    with ss_server(method, "secret", tmp_path) as port:
        await udp_round_trip(outbound(method, "secret", port), echo)


@needs_sing_box
@pytest.mark.parametrize("method", METHODS_2022)
@pytest.mark.parametrize("domain", [None, "localhost"])
async def test_2022_tcp_through_sing_box(method: str, domain: str | None, echo: EchoServers,
                                         tmp_path: Path) -> None:  # fmt: skip
    key = key_2022(method)
    inbound = {"type": "shadowsocks", "method": method, "password": key, "network": "tcp"}
    with sing_box(inbound, tmp_path) as port:
        await tcp_round_trip(outbound(method, key, port), echo, domain)


@needs_sing_box
@pytest.mark.parametrize("method", METHODS_2022)
async def test_2022_udp_through_sing_box(method: str, echo: EchoServers, tmp_path: Path) -> None:
    key = key_2022(method)
    inbound = {"type": "shadowsocks", "method": method, "password": key}
    with sing_box(inbound, tmp_path) as port:
        await udp_round_trip(outbound(method, key, port), echo)


@needs_ss_server
async def test_wrong_password_fails_within_the_handshake_timeout(
    echo: EchoServers, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """ss-server holds a connection whose key is wrong open in silence: the flow is cut
    within the handshake timeout, with one line that names the likely cause."""
    with ss_server("aes-256-gcm", "right", tmp_path) as port:
        ob = outbound("aes-256-gcm", "wrong", port)
        stream = await open_stream(ob, echo.tcp_port, initial=b"GET / HTTP/1.1\r\n\r\n",
                                   timeout=1.0)  # fmt: skip
        start = time.monotonic()
        with pytest.raises(DialError, match=r"shadowsocks ss: no answer within 1s .*wrong "
                                            r"password or method\?"):  # fmt: skip
            await stream.receive_some(65536)
        assert 0.8 < time.monotonic() - start < 1.5
        stream.close(reset=True)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "wrong password or method" in warnings[0].getMessage()


@needs_sing_box
async def test_2022_wrong_key_fails_fast(echo: EchoServers, tmp_path: Path) -> None:
    method = "2022-blake3-aes-128-gcm"
    inbound = {"type": "shadowsocks", "method": method, "password": key_2022(method),
               "network": "tcp"}  # fmt: skip
    with sing_box(inbound, tmp_path) as port:
        ob = outbound(method, key_2022(method), port)
        stream = await open_stream(ob, echo.tcp_port, initial=b"hello", timeout=3.0)
        start = time.monotonic()
        with pytest.raises(DialError, match="wrong password or method"):
            await stream.receive_some(65536)
        assert time.monotonic() - start < 3.5
        stream.close(reset=True)


@needs_ss_server
async def test_a_proven_key_leaves_slow_destinations_alone(echo: EchoServers,
                                                           tmp_path: Path) -> None:  # fmt: skip
    """Once an answer decrypted with our key, a destination that is slow to speak is not
    mistaken for a wrong key (long polls): only unproven keys get the deadline."""
    with ss_server("aes-128-gcm", "pw", tmp_path) as port:
        ob = outbound("aes-128-gcm", "pw", port)
        first = await open_stream(ob, echo.tcp_port, initial=b"x", timeout=0.5)
        assert await first.receive_some(100) == b"x"
        first.close()
        silent = await open_stream(ob, echo.tcp_port, timeout=0.5)  # nothing to echo
        with trio.move_on_after(1.2) as scope:
            await silent.receive_some(100)
        assert scope.cancelled_caught  # still waiting: not cut at 0.5 s
        silent.close()


@pytest.mark.parametrize("what", ["garbage", "tampered", "stale", "other salt"])
async def test_bad_answers_reset_the_flow(what: str, nursery: trio.Nursery) -> None:
    method = "2022-blake3-aes-128-gcm" if what in ("stale", "other salt") else "aes-128-gcm"
    password = key_2022(method) if method.startswith("2022") else "pw"
    key = proto.master_key(method, password)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def serve() -> None:
        stream = await listeners[0].accept()
        request = await stream.receive_some(65536)
        salt = request[: proto.key_length(method)]
        if what == "garbage":
            reply = os.urandom(200)
        elif what == "tampered":
            reply = bytearray(proto.Encryptor(method, key).encrypt(b"hello"))
            reply[-1] ^= 1
        else:
            enc = proto.Encryptor(method, key)
            when = time.time() - 120 if what == "stale" else None
            req_salt = salt if what == "stale" else os.urandom(len(salt))
            reply = proto.encode_response_header(enc, req_salt, b"hello", now=when)
        await stream.send_all(bytes(reply))
        await trio.sleep_forever()

    nursery.start_soon(serve)
    ob = outbound(method, password, port)
    stream = await open_stream(ob, 9, initial=b"hi", timeout=3.0)
    expected = {"garbage": "authentication failed", "tampered": "authentication failed",
                "stale": "timestamp", "other salt": "not for our request"}[what]  # fmt: skip
    with pytest.raises(DialError, match=expected) as caught:
        await stream.receive_some(65536)
    assert str(caught.value).startswith("shadowsocks ss: ")
    stream.close(reset=True)
    nursery.cancel_scope.cancel()


async def test_download_is_a_view_and_an_idle_flow_holds_no_buffers(
    nursery: trio.Nursery,
) -> None:
    """The plaintext comes as a view of the decryptor's buffer; while the flow waits
    for the server the buffers are given back, and a chunk cut in two survives that."""
    method = "aes-128-gcm"
    key = proto.master_key(method, "pw")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    more = trio.Event()

    async def serve() -> None:
        server = await listeners[0].accept()
        await server.receive_some(65536)
        enc = proto.Encryptor(method, key)
        wire = enc.encrypt(b"hello") + enc.encrypt(b"x" * 20000)
        cut = len(enc.salt) + 2 * (2 + proto.TAG_LEN) + 5 + 2 * proto.TAG_LEN + 100
        await server.send_all(wire[:cut])  # "hello" and part of the next chunk
        await more.wait()
        await server.send_all(wire[cut:])
        await trio.sleep_forever()

    nursery.start_soon(serve)
    stream = await open_stream(outbound(method, "pw", listeners[0].socket.getsockname()[1]), 9,
                               initial=b"hi")  # fmt: skip
    first = await stream.receive_some(65536)
    assert isinstance(first, memoryview) and first == b"hello"

    async def release_when_blocked() -> None:
        await trio.testing.wait_all_tasks_blocked()
        assert not stream._dec.holds_buffers  # waiting: nothing held
        more.set()

    nursery.start_soon(release_when_blocked)
    with trio.fail_after(5):
        got = bytearray()
        while len(got) < 20000:
            got += await stream.receive_some(65536)
    assert got == b"x" * 20000
    stream.close()
    nursery.cancel_scope.cancel()


@pytest.mark.parametrize("method", ["aes-128-gcm", "2022-blake3-aes-128-gcm"])
async def test_the_request_goes_with_the_clients_first_bytes(method: str,
                                                             nursery: trio.Nursery) -> None:  # fmt: skip
    """Not sniffed (initial empty): the request waits for the client's first write and
    they go as one chunk (SIP022: in the variable header, without padding)."""
    password = key_2022(method) if method.startswith("2022") else "pw"
    key = proto.master_key(method, password)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    received: list[bytes] = []

    async def serve() -> None:
        server = await listeners[0].accept()
        wire = b""
        while chunk := await server.receive_some(65536):
            wire += chunk
        received.append(wire)

    nursery.start_soon(serve)
    ob = outbound(method, password, listeners[0].socket.getsockname()[1])
    stream = await open_stream(ob, 80, initial=b"")
    payload = b"GET / HTTP/1.1\r\n\r\n"
    await stream.send_all(memoryview(payload))
    await stream.send_eof()
    with trio.fail_after(5):
        while not received:  # noqa: ASYNC110 - bounded by fail_after
            await trio.sleep(0.01)
    stream.close()
    address = encode_address(LOCALHOST, 80)
    salt = proto.key_length(method)
    if method.startswith("2022"):
        decoder = RequestDecoder(method, key)
        assert decoder.feed(received[0]) == payload and decoder.target == (LOCALHOST, 80)
        # no padding: the payload took its place
        expected = salt + 11 + proto.TAG_LEN + len(address) + 2 + len(payload) + proto.TAG_LEN
    else:
        assert Decryptor(method, key).feed(received[0]) == address + payload
        expected = salt + 2 + proto.TAG_LEN + len(address) + len(payload) + proto.TAG_LEN
    assert len(received[0]) == expected  # one chunk


@pytest.mark.parametrize("first", ["read", "eof"])
async def test_a_client_that_waits_gets_the_request_sent_alone(first: str,
                                                               nursery: trio.Nursery) -> None:  # fmt: skip
    """At the stream's first read, or ahead of the EOF of a client that said nothing."""
    method = "aes-128-gcm"
    key = proto.master_key(method, "pw")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    got = []

    async def serve() -> None:
        server = await listeners[0].accept()
        dec = Decryptor(method, key)
        plain = b""
        while not plain:
            plain += dec.feed(await server.receive_some(65536))
        got.append(plain)
        await server.send_all(proto.Encryptor(method, key).encrypt(b"220 ready\r\n"))
        got.append(await server.receive_some(65536))  # b"" once the client is done

    nursery.start_soon(serve)
    stream = await open_stream(outbound(method, "pw", listeners[0].socket.getsockname()[1]), 25)
    with trio.fail_after(5):
        if first == "eof":
            await stream.send_eof()
        assert await stream.receive_some(65536) == b"220 ready\r\n"
        if first == "read":
            await stream.send_eof()
        while len(got) < 2:  # noqa: ASYNC110 - bounded by fail_after
            await trio.sleep(0.01)
    assert got == [encode_address(LOCALHOST, 25), b""]  # the request alone, then EOF
    stream.close()


async def test_dead_and_silent_servers() -> None:
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))
    port = dead.getsockname()[1]
    dead.close()  # nothing listens there
    with pytest.raises(DialError, match=r"shadowsocks ss: connect to 127\.0\.0\.1:\d+ failed"):
        await outbound("aes-128-gcm", "pw", port).open_stream(
            Destination((LOCALHOST, 80)), timeout=2.0
        )
    silent = socket.create_server(("127.0.0.1", 0))  # accepts (backlog), never answers
    try:
        ob = outbound("aes-128-gcm", "pw", silent.getsockname()[1])
        stream = await open_stream(ob, 80, initial=b"GET /", timeout=0.5)
        with pytest.raises(DialError, match=r"no answer within 0\.5s"):
            await stream.receive_some(100)
        stream.close(reset=True)
    finally:
        silent.close()


@needs_ss_server
async def test_oversize_datagrams_are_dropped_and_counted(echo: EchoServers,
                                                          tmp_path: Path) -> None:  # fmt: skip
    with ss_server("aes-128-gcm", "pw", tmp_path) as port:
        ob = outbound("aes-128-gcm", "pw", port)
        dst = ("127.0.0.1", echo.udp_port)
        link = await ob.open_udp(UdpRequest(("127.0.0.1", 40000), dst, bytearray(65536), 5.0))
        reason = link.send(memoryview(bytes(65500)), dst, None)
        assert reason is not None and "over one UDP packet" in reason
        assert link.counters.oversize == 1 and link.counters.sent == 0
        link.close()


async def test_udp_replays_are_dropped() -> None:
    """A 2022 reply replayed (same server session and packet id) is delivered once."""
    method = "2022-blake3-aes-128-gcm"
    password = key_2022(method)
    key = proto.master_key(method, password)
    server = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await server.bind(("127.0.0.1", 0))
    ob = outbound(method, password, server.getsockname()[1])
    dst = ("127.0.0.1", 5353)
    link = await ob.open_udp(UdpRequest(("127.0.0.1", 40000), dst, bytearray(65536), 5.0))
    got: list[bytes] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.receive, lambda p, r: got.append(bytes(p)))
        assert link.send(memoryview(b"q"), dst, None) is None
        request, peer = await server.recvfrom(65536)
        client = packets.udp2022_open(method, key, request, from_server=False)
        reply = packets.udp2022_seal(method, key, b"S" * 8, 0, LOCALHOST, 5353, b"answer",
                                   client_session_id=client.session_id)  # fmt: skip
        for _ in range(3):
            await server.sendto(reply, peer)
        await trio.sleep(0.2)
        nursery.cancel_scope.cancel()
    link.close()
    server.close()
    assert got == [b"answer"]
    assert link.counters.malformed == 2


def test_2022_key_of_the_wrong_length_is_refused() -> None:
    with pytest.raises(ValueError, match="exactly 16 bytes"):
        outbound("2022-blake3-aes-128-gcm", key_2022("2022-blake3-aes-256-gcm"), 1)


def test_wire_header_for_a_domain() -> None:
    """The request carries the sniffed domain as ATYP 3 (checked by decrypting it)."""
    ob = outbound("aes-128-gcm", "pw", 1)
    first = ob.first_write(ob._encryptor(), "example.com", 443, b"payload")
    plain = Decryptor("aes-128-gcm", ob.key).feed(first)
    assert plain == b"\x03\x0bexample.com" + struct.pack("!H", 443) + b"payload"


@needs_ss_server
async def test_dns_servers_can_be_reached_through_shadowsocks(echo: EchoServers,
                                                              tmp_path: Path) -> None:  # fmt: skip
    """dns.servers[].outbound = a shadowsocks outbound: the splitter gets a trio Stream
    over the encrypted connection (TCP DNS, or TLS on top for DoT/DoH)."""
    from trio_tproxy.dns.dialer import dialer_for
    from trio_tproxy.resolver import SystemResolver

    with ss_server("aes-128-gcm", "pw", tmp_path) as port:
        dialer = dialer_for(outbound("aes-128-gcm", "pw", port), SystemResolver())
        stream = await dialer.open_stream((LOCALHOST, echo.tcp_port), 5.0)
        query = b"\x00\x05hello"
        await stream.send_all(query)
        got = b""
        with trio.fail_after(5):
            while len(got) < len(query):
                got += await stream.receive_some()
        assert got == query
        await stream.aclose()


# -- through relay_stream: the relay engine carries the flow (relay_engine.Codec) ------


async def fake_server(method: str, key: bytes, answer: bytes | None, *,
                      nursery: trio.Nursery) -> tuple[int, list[bytes]]:  # fmt: skip
    """A shadowsocks server on loopback: records the request's plaintext, answers
    ``answer`` (None: stays silent, as ss-server does for a wrong key), then closes once
    the client has."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    requests: list[bytes] = []

    async def serve() -> None:
        server = await listeners[0].accept()
        if answer is None:  # as ss-server with a request it cannot open: silence
            await trio.sleep_forever()
        dec = Decryptor(method, key)
        plain = b""
        while not plain:
            plain += dec.feed(await server.receive_some(65536))
        requests.append(plain)
        await server.send_all(proto.Encryptor(method, key).encrypt(answer))
        while await server.receive_some(65536):
            pass
        await server.aclose()

    nursery.start_soon(serve)
    return listeners[0].socket.getsockname()[1], requests


async def carry(stream: ShadowsocksStream, client_end: socket.socket,
                timeout: float = 5.0) -> relay.RelayStats:  # noqa: ASYNC109 # fmt: skip
    with trio.fail_after(timeout):
        return await relay_stream(client_end, stream, relay.RelayTimeouts(idle=30),
                                        pool=relay.BufferPool(65536))  # fmt: skip


@pytest.fixture
def no_pumps(monkeypatch: pytest.MonkeyPatch) -> None:
    """A short flow is the engine's alone: the stream's own methods are not used."""

    async def pump(*args: object) -> None:
        raise AssertionError("a pump ran")

    for name in ("send_all", "receive_some", "send_eof"):
        monkeypatch.setattr(ShadowsocksStream, name, pump)


@pytest.mark.usefixtures("no_pumps")
async def test_a_short_flow_is_sealed_and_opened_in_the_relay_engine(
    tcp_pairs: Callable[[], tuple[socket.socket, socket.socket]], nursery: trio.Nursery,
) -> None:  # fmt: skip
    method, key = "aes-128-gcm", proto.master_key("aes-128-gcm", "pw")
    port, requests = await fake_server(method, key, b"HTTP/1.1 200 OK\r\n\r\nhi", nursery=nursery)
    client, proxy_end = tcp_pairs()
    stream = await open_stream(outbound(method, "pw", port), 80, initial=b"GET / HTTP/1.1\r\n")
    client.sendall(b"\r\n")
    client.shutdown(socket.SHUT_WR)
    stats = await carry(stream, proxy_end)
    assert stats.outcome == "done"
    assert requests == [encode_address(LOCALHOST, 80) + b"GET / HTTP/1.1\r\n"]
    client.setblocking(True)
    assert client.recv(100) == b"HTTP/1.1 200 OK\r\n\r\nhi"
    assert not stream._dec.holds_buffers  # the finished flow gave its buffers back


@pytest.mark.usefixtures("no_pumps")
async def test_a_wrong_key_in_the_engine_fails_within_the_handshake_timeout(
    tcp_pairs: Callable[[], tuple[socket.socket, socket.socket]], nursery: trio.Nursery,
) -> None:  # fmt: skip
    method = "aes-128-gcm"
    port, _ = await fake_server(method, proto.master_key(method, "right"), None,
                                nursery=nursery)  # fmt: skip
    client, proxy_end = tcp_pairs()
    stream = await open_stream(outbound(method, "wrong", port), 80, initial=b"GET /",
                               timeout=0.5)  # fmt: skip
    start = time.monotonic()
    stats = await carry(stream, proxy_end)
    assert 0.3 < time.monotonic() - start < 1.5
    assert stats.outcome.startswith("downlink error: shadowsocks ss: no answer within 0.5s")
    assert "wrong password or method" in stats.outcome
    proxy_end.close()
    client.setblocking(True)
    with pytest.raises(ConnectionResetError):
        client.recv(100)


@pytest.mark.usefixtures("no_pumps")
async def test_a_server_first_protocol_gets_the_request_alone_in_the_engine(
    tcp_pairs: Callable[[], tuple[socket.socket, socket.socket]], nursery: trio.Nursery,
) -> None:  # fmt: skip
    """Not sniffed, and the client waits for the server (SMTP): the request goes alone
    when the engine takes the flow, and the banner comes back."""
    method, key = "aes-128-gcm", proto.master_key("aes-128-gcm", "pw")
    port, requests = await fake_server(method, key, b"220 ready\r\n", nursery=nursery)
    client, proxy_end = tcp_pairs()
    stream = await open_stream(outbound(method, "pw", port), 25)

    async def smtp_client() -> None:
        while True:
            try:
                banner = client.recv(100)
                break
            except BlockingIOError:
                await trio.lowlevel.wait_readable(client)
        assert banner == b"220 ready\r\n"
        client.shutdown(socket.SHUT_WR)

    async with trio.open_nursery() as inner:
        inner.start_soon(smtp_client)
        stats = await carry(stream, proxy_end)
    assert stats.outcome == "done"
    assert requests == [encode_address(LOCALHOST, 25)]
