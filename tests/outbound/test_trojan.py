"""The trojan outbound against real servers on loopback: trojan-gfw and sing-box's
trojan inbound; TCP and UDP, certificate checks, the decoy site as a wrong password."""

from __future__ import annotations

import _ssl
import contextlib
import ipaddress
import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_tproxy.config import TrojanOutbound as TrojanConfig
from trio_tproxy.config.values import HostPort
from trio_tproxy.dial import DialError
from trio_tproxy.outbound import tls_native, trojan_proto
from trio_tproxy.outbound import trojan as trojan_module
from trio_tproxy.outbound.tls_client import MAX_MISSES, SessionCache
from trio_tproxy.outbound.tls_native import NativeSession, native_sessions
from trio_tproxy.outbound.trojan import TrojanOutbound, TrojanStream, looks_like_decoy
from trio_tproxy.upstreams import Destination, StreamUpstream, UdpRequest

from .upstream_servers import (
    EchoServers,
    HttpDecoy,
    OneAtATimeServer,
    free_port,
    make_tls_certificate,
    needs_sing_box,
    needs_trojan,
    running,
    sing_box,
    trojan_server,
)

LOCALHOST = ipaddress.ip_address("127.0.0.1")


@pytest.fixture
def echo() -> Iterator[EchoServers]:
    servers = EchoServers()
    yield servers
    servers.close()


@pytest.fixture
def decoy() -> Iterator[HttpDecoy]:
    server = HttpDecoy()
    yield server
    server.close()


def outbound(port: int, password: str = "pw", **kw: object) -> TrojanOutbound:
    cfg = TrojanConfig(tag="tj", server=HostPort("127.0.0.1", port), password=password,
                       **kw)  # type: ignore[arg-type]  # fmt: skip
    return TrojanOutbound(cfg)


async def open_stream(ob: TrojanOutbound, port: int, initial: bytes = b"\x16\x03\x01hello",
                      timeout: float = 5.0) -> TrojanStream:  # noqa: ASYNC109 # fmt: skip
    up = await ob.open_stream(Destination((LOCALHOST, port)), timeout=timeout, initial=initial)
    assert isinstance(up, StreamUpstream) and up.chain == ("tj",)
    assert isinstance(up.stream, TrojanStream)
    return up.stream


async def echo_round_trip(ob: TrojanOutbound, echo: EchoServers) -> None:
    initial = b"\x16\x03\x01hello"
    stream = await open_stream(ob, echo.tcp_port, initial)
    payload = os.urandom(1_000_000)
    got = bytearray()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.send_all, payload)
        while len(got) < len(initial) + len(payload):
            chunk = await stream.receive_some(65536)
            assert chunk
            got += chunk
    assert bytes(got) == initial + payload
    stream.close()


@pytest.fixture
def trojan(tmp_path: Path, decoy: HttpDecoy) -> Iterator[tuple[int, Path]]:
    with trojan_server("pw", tmp_path, decoy.port) as server:
        yield server


@needs_trojan
@pytest.mark.parametrize("sni", ["tj.test", None])  # None: by IP, checked against its IP SAN
async def test_tcp_through_trojan_gfw(trojan: tuple[int, Path], echo: EchoServers,
                                      sni: str | None) -> None:  # fmt: skip
    port, ca = trojan
    await echo_round_trip(outbound(port, sni=sni, ca=str(ca)), echo)


@needs_trojan
async def test_udp_through_trojan_gfw(trojan: tuple[int, Path], echo: EchoServers) -> None:
    port, ca = trojan
    ob = outbound(port, sni="tj.test", ca=str(ca))
    dst = ("127.0.0.1", echo.udp_port)
    link = await ob.open_udp(UdpRequest(("127.0.0.1", 40000), dst, bytearray(65536), 5.0))
    got: list[tuple[bytes, tuple[str, int]]] = []
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.receive, lambda p, r: got.append((bytes(p), r)))
            for i in range(3):
                assert link.send(memoryview(b"ping %d" % i), dst, None) is None
            assert link.send(memoryview(b"by name"), dst, "localhost") is None
            while len(got) < 4:  # noqa: ASYNC110 - bounded by move_on_after
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()
    link.close()
    assert sorted(got) == sorted([(b"ping %d" % i, dst) for i in range(3)] + [(b"by name", dst)])


async def echo_once(ob: TrojanOutbound, echo: EchoServers) -> bool:
    """One short flow; whether its TLS handshake resumed a session."""
    stream = await open_stream(ob, echo.tcp_port, b"\x16\x03\x01hi")
    with trio.fail_after(5):
        assert await stream.receive_some(65536) == b"\x16\x03\x01hi"
    resumed = stream._tls.sock.session_reused
    stream.close()
    return resumed


@needs_trojan
@pytest.mark.parametrize("sessions", ["tls_native", "session="])
async def test_the_next_connection_resumes_the_tls_session(
    trojan: tuple[int, Path], echo: EchoServers, sessions: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    if sessions == "session=":  # where tls_native cannot be used
        monkeypatch.setattr(trojan_module, "native_sessions", lambda: None)
    port, ca = trojan
    ob = outbound(port, sni="tj.test", ca=str(ca))
    assert (ob.sessions.native is None) is (sessions == "session=")
    assert [await echo_once(ob, echo) for _ in range(4)] == [False, True, True, True]
    # another outbound (here: another SNI for the same server) has sessions of its own
    assert await echo_once(outbound(port, ca=str(ca)), echo) is False


def ssl_on_a_shared_libssl() -> bool:
    """CPython 3.9-3.14 whose _ssl links the libssl mapped (as Debian's and pyenv's
    do; not an OpenSSL linked into _ssl statically): where tls_native must work."""
    low, high = tls_native.KNOWN_LAYOUT
    path = tls_native._libssl_path()
    if sys.implementation.name != "cpython" or not low <= sys.version_info[:2] <= high \
            or path is None:  # fmt: skip
        return False
    ldd = subprocess.run(["ldd", _ssl.__file__], capture_output=True, text=True, check=False)
    return os.path.basename(path) in ldd.stdout


def needs_native_sessions() -> None:
    if not ssl_on_a_shared_libssl():
        pytest.skip("this Python's ssl is not on a shared libssl: tls_native is not used")
    assert native_sessions() is not None


@needs_trojan
async def test_each_connection_resumes_a_duplicate_without_der_copies(
    trojan: tuple[int, Path], echo: EchoServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tls_native: connections are offered duplicates of the one session kept, never
    through wrap_socket's ``session`` (CPython's DER copies); however they end, plain
    closes or resets, the session kept stays the same and resumable."""
    needs_native_sessions()
    given: list[object] = []
    wrap_socket = ssl.SSLContext.wrap_socket

    def recording(self: ssl.SSLContext, *args: object, **kw: object) -> ssl.SSLSocket:
        given.append(kw.get("session"))
        return wrap_socket(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ssl.SSLContext, "wrap_socket", recording)
    port, ca = trojan
    ob = outbound(port, sni="tj.test", ca=str(ca))
    assert await echo_once(ob, echo) is False
    kept = ob.sessions.offer()
    assert isinstance(kept, NativeSession)
    for reset in (False, True, False, True):
        stream = await open_stream(ob, echo.tcp_port, b"\x16\x03\x01hi")
        with trio.fail_after(5):
            assert await stream.receive_some(65536) == b"\x16\x03\x01hi"
        assert stream._tls.sock.session_reused
        stream.close(reset=reset)
    assert ob.sessions.offer() is kept
    assert given == [None] * 5


class AbruptTlsServer(OneAtATimeServer):
    """TLS 1.2 (a resumed connection keeps the session it was offered: no new ticket
    replaces it): answers, then ends the connection by ``ending``: a bare FIN, without
    close_notify, or a record that does not decrypt (the client sends a fatal alert).
    Either makes OpenSSL mark the client connection's session not resumable."""

    def __init__(self, tmp: Path, ending: str) -> None:
        cert, key = make_tls_certificate(tmp)
        self.ca, self.ending = cert, ending
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        super().__init__()

    def handle(self, conn: socket.socket) -> None:
        tls = self.ctx.wrap_socket(conn, server_side=True)
        tls.settimeout(5)
        tls.recv(65536)
        tls.sendall(b"220 ready\r\n")
        time.sleep(0.05)  # the answer is read alone
        if self.ending == "a bad record":  # application data that does not decrypt
            socket.socket.sendall(tls, b"\x17\x03\x03\x00\x20" + os.urandom(32))
            tls.settimeout(1)
            with contextlib.suppress(OSError):
                socket.socket.recv(tls, 4096)  # the client's alert, or its close
        socket.socket.shutdown(tls, socket.SHUT_RDWR)  # no close_notify
        tls.close()


@pytest.mark.parametrize("sessions", ["tls_native", "session="])
@pytest.mark.parametrize("ending", ["a bare FIN", "a bad record"])
async def test_a_connection_that_ends_badly_does_not_spoil_the_session(
    tmp_path: Path, ending: str, sessions: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenSSL marks a connection's session not resumable when the connection meets an
    unexpected EOF or a fatal alert, while it is open: the session kept is never one a
    connection holds (tls_native), and an EOF without close_notify counts as a close
    (OP_IGNORE_UNEXPECTED_EOF: CPython 3.12.7+ shares one session in ``session=``),
    so the next connection still resumes."""
    if sessions == "tls_native":
        needs_native_sessions()
    else:
        monkeypatch.setattr(trojan_module, "native_sessions", lambda: None)
    server = AbruptTlsServer(tmp_path, ending)
    try:
        ob = outbound(server.port, sni="tj.test", ca=str(server.ca))
        resumed = []
        for _ in range(4):
            with trio.fail_after(5):
                stream = await open_stream(ob, 25, initial=b"")
                assert await stream.receive_some(65536) == b"220 ready\r\n"
                resumed.append(stream._tls.sock.session_reused)
                if ending == "a bare FIN":
                    assert await stream.receive_some(65536) == b""
                else:
                    with pytest.raises(OSError, match="BAD_RECORD_MAC"):
                        await stream.receive_some(65536)
            stream.close()
        assert resumed == [False, True, True, True]
    finally:
        server.close()


def test_native_sessions_are_found_only_where_they_are_safe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    needs_native_sessions()
    assert tls_native._load() is not None

    class OtherOpenSSL:  # the libssl mapped is not the one _ssl was linked with
        def __init__(self, lib: object) -> None:
            self._lib = lib

        def __getattr__(self, name: str) -> object:
            return getattr(self._lib, name)

        def TLS_client_method(self) -> int:  # OpenSSL's name
            return 1

    lib = tls_native._bind(tls_native._libssl_path() or "")
    assert tls_native._probe(lib)
    assert not tls_native._probe(OtherOpenSSL(lib))
    monkeypatch.setattr(tls_native, "_libssl_path", lambda: None)  # none, or two
    assert tls_native._load() is None
    monkeypatch.undo()
    monkeypatch.setattr(tls_native, "KNOWN_LAYOUT", ((3, 0), (3, 8)))  # another layout
    assert tls_native._load() is None
    monkeypatch.undo()
    monkeypatch.setattr(tls_native, "ENABLED", False)  # TRIO_TPROXY_NATIVE_SESSIONS=off
    assert tls_native._load() is None


@needs_trojan
async def test_a_refused_session_gets_a_full_verified_handshake(
    tmp_path: Path, decoy: HttpDecoy, echo: EchoServers
) -> None:
    """The server restarts (its session cache is gone): the next flow does a full
    handshake, and it is verified: under a certificate we do not trust, it fails."""
    cert, key = make_tls_certificate(tmp_path)
    port = free_port()

    def server(cert: Path, key: Path, name: str) -> AbstractContextManager[object]:
        conf = tmp_path / f"{name}.json"
        conf.write_text(json.dumps({
            "run_type": "server", "local_addr": "127.0.0.1", "local_port": port,
            "remote_addr": "127.0.0.1", "remote_port": decoy.port, "password": ["pw"],
            "log_level": 1, "ssl": {"cert": str(cert), "key": str(key)},
        }))  # fmt: skip
        return running(["trojan", "-c", str(conf)], port, tmp_path / f"{name}.log")

    ob = outbound(port, sni="tj.test", ca=str(cert))
    with server(cert, key, "first"):
        assert [await echo_once(ob, echo) for _ in range(2)] == [False, True]
    with server(cert, key, "restarted"):
        assert [await echo_once(ob, echo) for _ in range(2)] == [False, True]
    other = tmp_path / "other"
    other.mkdir()
    with (server(*make_tls_certificate(other), "impostor"),
          pytest.raises(DialError, match="certificate verification failed")):  # fmt: skip
        await echo_once(ob, echo)


class RecordingTrojanServer(OneAtATimeServer):
    """A TLS server that records its first read of each connection (one TLS record:
    what the client sent in one write) and answers ``reply``, then each of ``more`` in
    a record of its own once ``go`` is set."""

    def __init__(self, tmp: Path, reply: bytes, tickets: int = 2,
                 more: tuple[bytes, ...] = ()) -> None:  # fmt: skip
        cert, key = make_tls_certificate(tmp)
        self.ca = cert
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.ctx.num_tickets = tickets
        self.reply, self.more = reply, more
        self.go, self.sent = threading.Event(), threading.Event()
        self.first_reads: list[bytes] = []
        super().__init__()  # serving from here on

    def handle(self, conn: socket.socket) -> None:
        with self.ctx.wrap_socket(conn, server_side=True) as tls:
            tls.settimeout(5)
            self.first_reads.append(tls.recv(65536))
            tls.sendall(self.reply)
            if self.more:
                self.go.wait(5)
                for record in self.more:
                    tls.sendall(record)
                self.sent.set()
            tls.recv(1)  # until the client closes


async def test_the_request_goes_with_the_clients_first_bytes(tmp_path: Path) -> None:
    """Not sniffed (initial empty): the request waits for the client's first write and
    shares its TLS record; a client that waits for the server gets the request sent
    alone at the first read."""
    server = RecordingTrojanServer(tmp_path, b"220 ready\r\n")
    try:
        ob = outbound(server.port, sni="tj.test", ca=str(server.ca))
        request = trojan_proto.encode_request(trojan_proto.password_hash("pw"),
                                              trojan_proto.CMD_CONNECT, LOCALHOST, 25)  # fmt: skip
        with trio.fail_after(5):
            stream = await open_stream(ob, 25, initial=b"")
            await stream.send_all(memoryview(b"EHLO x\r\n"))
            assert await stream.receive_some(65536) == b"220 ready\r\n"
            stream.close()
            stream = await open_stream(ob, 25, initial=b"")  # server first: no bytes yet
            assert await stream.receive_some(65536) == b"220 ready\r\n"
            await stream.send_all(b"QUIT\r\n")
            stream.close()
        assert server.first_reads == [request + b"EHLO x\r\n", request]
    finally:
        server.close()


async def test_records_in_are_taken_in_one_batch_and_idle_flows_hold_no_buffer(
    tmp_path: Path,
) -> None:
    """Five records already in come back from one read (one send to the client, not
    five); while the stream waits for the server it holds no buffer."""
    more = tuple(bytes([65 + i]) * 5000 for i in range(5))  # records of a stream
    server = RecordingTrojanServer(tmp_path, b"220 ready\r\n", more=more)
    try:
        ob = outbound(server.port, sni="tj.test", ca=str(server.ca))
        with trio.fail_after(5):
            stream = await open_stream(ob, 25, initial=b"")
            assert await stream.receive_some(65536) == b"220 ready\r\n"
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.receive_some, 65536)  # waits: nothing more yet
                await trio.testing.wait_all_tasks_blocked()
                assert stream._tls._held is None
                nursery.cancel_scope.cancel()
            server.go.set()
            while not server.sent.is_set():  # noqa: ASYNC110 - bounded by fail_after
                await trio.sleep(0.01)
            await trio.sleep(0.05)  # loopback: the records are in our socket by now
            assert await stream.receive_some(65536) == b"".join(more)
            stream.close()
    finally:
        server.close()


async def test_a_server_without_tickets_is_not_offered_sessions(tmp_path: Path) -> None:
    server = RecordingTrojanServer(tmp_path, b"220 ready\r\n", tickets=0)
    try:
        ob = outbound(server.port, sni="tj.test", ca=str(server.ca))
        for _ in range(MAX_MISSES + 1):
            with trio.fail_after(5):
                stream = await open_stream(ob, 25, initial=b"")
                assert await stream.receive_some(65536) == b"220 ready\r\n"
            assert not stream._tls.sock.session_reused
            stream.close()
        assert ob.sessions.offer() is None
        assert ob.sessions._paused_until > 0  # not read again for a while
    finally:
        server.close()


class FakeTls:
    """What SessionCache reads of an ssl.SSLSocket; counts reads of ``session``
    (CPython copies the session through DER on every read)."""

    def __init__(self, session: object, reused: bool, version: str = "TLSv1.3") -> None:
        self._session, self.session_reused, self._version = session, reused, version
        self.reads = 0

    @property
    def session(self) -> object:
        self.reads += 1
        return self._session

    def version(self) -> str:
        return self._version


class FakeSession:
    def __init__(self, created: float, has_ticket: bool = True, hint: int = 600) -> None:
        self.time, self.has_ticket, self.id = int(created), has_ticket, b"i"
        self.timeout, self.ticket_lifetime_hint = 7200, hint  # as OpenSSL's client has them


def keep(cache: SessionCache, session: FakeSession, *, reused: bool,
         offered: bool | None = None) -> FakeTls:  # fmt: skip
    """The cache told of a connection that was offered its session (by default: if it
    resumed) or none."""
    tls = FakeTls(session, reused)
    was_offered = reused if offered is None else offered
    cache.keep(tls, offered=cache.offer() if was_offered else None)  # type: ignore[arg-type]
    return tls


def test_session_cache_reads_a_session_only_when_it_needs_one() -> None:
    now = time.time()
    cache = SessionCache()
    assert cache.offer() is None
    keep(cache, FakeSession(now, has_ticket=False), reused=False)
    assert cache.offer() is None  # TLS 1.3 before a ticket: nothing to resume with
    first = FakeSession(now)
    keep(cache, first, reused=False)
    assert cache.offer() is first
    resumed = keep(cache, FakeSession(now), reused=True)
    assert cache.offer() is first and resumed.reads == 0  # fresh and accepted: kept
    refused = FakeSession(now)
    keep(cache, refused, reused=False, offered=True)
    assert cache.offer() is refused  # the server did not take it: the new one
    old = SessionCache()
    keep(old, FakeSession(now - 400), reused=False)
    newer = FakeSession(now)
    keep(old, newer, reused=True)
    assert old.offer() is newer  # past half the ticket's lifetime: replaced
    no_hint = SessionCache()
    kept = FakeSession(now - 400, hint=0)  # no ticket lifetime: its own 7200 s
    keep(no_hint, kept, reused=False)
    keep(no_hint, FakeSession(now), reused=True)
    assert no_hint.offer() is kept


@pytest.mark.parametrize("server", ["refuses", "gives no ticket"])
def test_a_server_that_does_not_resume_is_not_asked_for_a_while(server: str) -> None:
    """Each try costs two DER copies of a session: after MAX_MISSES misses in a row
    no session is offered nor read for RESUME_RETRY seconds."""
    cache = SessionCache()
    if server == "refuses":
        keep(cache, FakeSession(time.time()), reused=False)  # one to offer
    for _ in range(MAX_MISSES):
        assert (cache.offer() is not None) is (server == "refuses")
        if server == "refuses":
            keep(cache, FakeSession(time.time()), reused=False, offered=True)
        else:
            keep(cache, FakeSession(time.time(), has_ticket=False), reused=False,
                 offered=False)  # fmt: skip
    assert cache.offer() is None
    later = keep(cache, FakeSession(time.time()), reused=False)
    assert later.reads == 0 and cache.offer() is None


def test_a_resumption_that_does_not_renew_the_session_is_not_read_again() -> None:
    """Past half its lifetime the session is read again from a resumed connection; a
    server that resumes without a new ticket (TLS 1.2 by id) gives the same one back:
    it is kept, and not read again until a connection is refused."""
    cache = SessionCache()
    old = FakeSession(time.time() - 400)
    keep(cache, old, reused=False)
    same = keep(cache, FakeSession(old.time), reused=True)
    assert same.reads == 1 and cache.offer() is old
    later = keep(cache, FakeSession(old.time), reused=True)
    assert later.reads == 0 and cache.offer() is old
    new = FakeSession(time.time())
    keep(cache, new, reused=False, offered=True)  # refused at last: a full handshake
    assert cache.offer() is new


def test_flows_under_way_with_a_forgotten_session_count_one_miss() -> None:
    """The server restarted: every flow under way was offered the session it forgot
    and did a full handshake. The first replaces the session; the others were offered
    one the cache no longer has, and resumption is not paused for them."""
    cache = SessionCache()
    keep(cache, FakeSession(time.time()), reused=False)
    forgotten = cache.offer()
    for _ in range(MAX_MISSES + 2):
        tls = FakeTls(FakeSession(time.time()), reused=False)
        cache.keep(tls, offered=forgotten)  # type: ignore[arg-type]
    assert cache.offer() is not None and cache.offer() is not forgotten
    assert cache._paused_until == 0 and cache._misses == 1


@needs_trojan
async def test_unverifiable_certificate_fails_at_once(trojan: tuple[int, Path],
                                                      echo: EchoServers) -> None:  # fmt: skip
    port, _ = trojan
    start = time.monotonic()
    with pytest.raises(DialError, match="trojan tj: certificate verification failed"):
        await open_stream(outbound(port, sni="tj.test"), echo.tcp_port)
    with pytest.raises(DialError, match="certificate verification failed"):  # wrong name
        await open_stream(outbound(port, sni="other.test", ca=str(trojan[1])), echo.tcp_port)
    assert time.monotonic() - start < 2
    # insecure: no verification at all
    await echo_round_trip(outbound(port, sni="whatever", insecure=True), echo)


@needs_trojan
async def test_wrong_password_is_told_by_the_decoy(trojan: tuple[int, Path], echo: EchoServers,
                                                   caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    port, ca = trojan
    stream = await open_stream(outbound(port, "wrong", sni="tj.test", ca=str(ca)), echo.tcp_port)
    with pytest.raises(DialError, match=r"trojan tj: the server's fallback web site answered "
                                        r"\(wrong password\?\)"):  # fmt: skip
        await stream.receive_some(65536)
    stream.close(reset=True)
    assert any("fallback web site" in r.getMessage() for r in caplog.records
               if r.levelno == logging.WARNING)  # fmt: skip


@needs_sing_box
async def test_tcp_and_udp_through_sing_box(tmp_path: Path, echo: EchoServers) -> None:
    cert, key = make_tls_certificate(tmp_path)
    inbound = {"type": "trojan", "users": [{"password": "pw"}],
               "tls": {"enabled": True, "certificate_path": str(cert), "key_path": str(key)}}  # fmt: skip
    with sing_box(inbound, tmp_path) as port:
        ob = outbound(port, sni="tj.test", ca=str(cert))
        await echo_round_trip(ob, echo)
        dst = ("127.0.0.1", echo.udp_port)
        link = await ob.open_udp(UdpRequest(("127.0.0.1", 40000), dst, bytearray(65536), 5.0))
        got: list[bytes] = []
        with trio.move_on_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(link.receive, lambda p, r: got.append(bytes(p)))
                assert link.send(memoryview(b"dgram"), dst, None) is None
                while not got:  # noqa: ASYNC110 - bounded by move_on_after
                    await trio.sleep(0.02)
                nursery.cancel_scope.cancel()
        link.close()
        assert got == [b"dgram"]


async def test_dead_server_fails_fast() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(DialError, match=r"trojan tj: connect to 127\.0\.0\.1:\d+ failed"):
        await open_stream(outbound(port), 80)


async def test_silent_server_hits_the_handshake_timeout() -> None:
    import socket

    silent = socket.create_server(("127.0.0.1", 0))  # completes TCP, never speaks TLS
    try:
        start = time.monotonic()
        with pytest.raises(DialError, match=r"trojan tj: no answer within 0.5s"):
            await open_stream(outbound(silent.getsockname()[1]), 80, timeout=0.5)
        assert time.monotonic() - start < 1.0
    finally:
        silent.close()


@pytest.mark.parametrize(("initial", "first", "decoy"), [
    (b"\x16\x03\x01", b"HTTP/1.1 400 Bad Request\r\n", True),
    (b"", b"<!DOCTYPE HTML>\n<html>", True),  # http.server's HTTP/0.9 style error page
    (b"GET / HTTP/1.1\r\n", b"HTTP/1.1 400 Bad Request\r\n", False),  # cannot tell
    (b"\x16\x03\x01", b"\x16\x03\x03\x00", False),
    (b"", b"SSH-2.0-OpenSSH", False),
])  # fmt: skip
def test_decoy_detection(initial: bytes, first: bytes, decoy: bool) -> None:
    assert looks_like_decoy(initial, first) is decoy


@needs_trojan
async def test_http_sent_after_the_request_is_not_mistaken_for_the_decoy(
    trojan: tuple[int, Path], tmp_path: Path
) -> None:
    """Without sniffing the client's first bytes travel after the request: an HTTP
    answer to an HTTP request is the destination's, not the decoy's."""
    port, ca = trojan
    web = HttpDecoy()  # any HTTP server will do as the destination
    try:
        ob = outbound(port, sni="tj.test", ca=str(ca))
        stream = await open_stream(ob, web.port, initial=b"")
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with trio.fail_after(5):
            assert bytes(await stream.receive_some(65536)).startswith(b"HTTP/1.1 400")
        stream.close()
    finally:
        web.close()
