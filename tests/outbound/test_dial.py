"""Happy Eyeballs (RFC 8305) and handshake reads: timing with a fake dialer on trio's
autojump clock, then the real thing over loopback sockets."""

from __future__ import annotations

import errno
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_tproxy import dial
from trio_tproxy.addr import IPAddress, SockAddr
from trio_tproxy.dial import (
    DialError,
    interleave_families,
    open_tcp_happy,
    open_tcp_host,
    recv_message,
)
from trio_tproxy.outbound.socks_proto import parse_reply

A6 = ipaddress.IPv6Address("2001:db8::1")
B6 = ipaddress.IPv6Address("2001:db8::2")
A4 = ipaddress.IPv4Address("192.0.2.1")
B4 = ipaddress.IPv4Address("192.0.2.2")


def test_interleave_prefers_ipv6_then_alternates() -> None:
    assert interleave_families([A4, B4, A6, B6]) == [A6, A4, B6, B4]
    assert interleave_families([A4, A6, A4]) == [A6, A4]
    assert interleave_families([A4]) == [A4]
    assert interleave_families([]) == []


class TrackedSocket(socket.socket):
    """A real (unconnected) socket that remembers which address it stands for."""

    def __init__(self, peer_ip: IPAddress, closed: list[IPAddress]) -> None:
        super().__init__(socket.AF_UNIX, socket.SOCK_STREAM)
        self.peer_ip = peer_ip
        self._closed_log = closed

    def close(self) -> None:
        if self.fileno() >= 0:
            self._closed_log.append(self.peer_ip)
        super().close()


class FakeDialer:
    """Stands in for dial.open_tcp: each address connects after a delay or fails."""

    def __init__(self, plan: dict[IPAddress, tuple[float, bool]]) -> None:
        self.plan = plan
        self.started: dict[IPAddress, float] = {}
        self.cancelled: list[IPAddress] = []
        self.closed: list[IPAddress] = []

    async def __call__(self, addr: SockAddr, *, mark: int, timeout: float) -> socket.socket:  # noqa: ASYNC109
        ip = addr[0]
        self.started[ip] = trio.current_time()
        delay, ok = self.plan[ip]
        try:
            await trio.sleep(delay)
        except trio.Cancelled:
            self.cancelled.append(ip)
            raise
        if not ok:
            raise DialError(errno.ECONNREFUSED, f"connect to {ip} failed: Connection refused")
        return TrackedSocket(ip, self.closed)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeDialer]]:
    made: list[FakeDialer] = []

    def make(plan: dict[IPAddress, tuple[float, bool]]) -> FakeDialer:
        d = FakeDialer(plan)
        monkeypatch.setattr(dial, "open_tcp", d)
        made.append(d)
        return d

    yield make  # type: ignore[misc]


async def test_ipv6_wins_when_fast_and_ipv4_never_starts(
    fake: type[FakeDialer], autojump_clock: trio.testing.MockClock
) -> None:
    d = fake({A6: (0.1, True), A4: (0.01, True)})
    sock = await open_tcp_happy([A4, A6], 443, mark=0, timeout=10)
    assert sock.peer_ip == A6
    assert d.started == {A6: 0.0}
    sock.close()


async def test_slow_ipv6_gives_ipv4_a_start_after_250ms_and_loses(
    fake: type[FakeDialer], autojump_clock: trio.testing.MockClock
) -> None:
    d = fake({A6: (5.0, True), A4: (0.1, True)})
    sock = await open_tcp_happy([A4, A6], 443, mark=0, timeout=10)
    assert sock.peer_ip == A4
    assert d.started == {A6: 0.0, A4: pytest.approx(0.25)}
    assert trio.current_time() == pytest.approx(0.35)
    assert d.cancelled == [A6]  # the loser's attempt was cancelled (open_tcp closes it)
    sock.close()


async def test_failed_attempt_starts_the_next_at_once(
    fake: type[FakeDialer], autojump_clock: trio.testing.MockClock
) -> None:
    d = fake({A6: (0.05, False), A4: (0.1, True), B6: (0.1, True)})
    sock = await open_tcp_happy([A4, A6, B6], 443, mark=0, timeout=10)
    assert d.started[A4] == pytest.approx(0.05)  # not 0.25: A6 failed at 0.05
    assert sock.peer_ip == A4
    sock.close()


async def test_photo_finish_closes_the_second_winner(
    fake: type[FakeDialer], autojump_clock: trio.testing.MockClock
) -> None:
    # A6 needs 0.35 s, A4 starts at 0.25 and needs 0.1: both finish at 0.35.
    d = fake({A6: (0.35, True), A4: (0.1, True)})
    sock = await open_tcp_happy([A4, A6], 443, mark=0, timeout=10)
    loser = A4 if sock.peer_ip == A6 else A6
    assert loser in d.closed or loser in d.cancelled
    sock.close()


async def test_all_fail_reports_every_address(
    fake: type[FakeDialer], autojump_clock: trio.testing.MockClock
) -> None:
    fake({A6: (0.01, False), A4: (0.02, False)})
    with pytest.raises(DialError) as info:
        await open_tcp_happy([A4, A6], 443, mark=0, timeout=10)
    assert str(info.value) == (
        "connect to 2001:db8::1 failed: Connection refused; connect to 192.0.2.1 failed: "
        "Connection refused"
    )
    assert info.value.errno == errno.ECONNREFUSED


async def test_no_addresses() -> None:
    with pytest.raises(DialError, match="no address"):
        await open_tcp_happy([], 443, mark=0, timeout=1)


# --- real loopback sockets -------------------------------------------------------------


def listener(host: str, port: int = 0, backlog: int = 16) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, port))
    s.listen(backlog)
    s.setblocking(False)
    return s


def blackhole_v6() -> tuple[socket.socket, socket.socket]:
    """A ::1 port whose SYNs are dropped: backlog 0, its one queue slot already taken."""
    hole = listener("::1", backlog=0)
    filler = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    filler.connect(hole.getsockname()[:2])
    return hole, filler


def accepted(s: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = s.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


async def test_real_ipv6_preferred() -> None:
    v6 = listener("::1")
    port = v6.getsockname()[1]
    v4 = listener("127.0.0.1", port)
    with v6, v4:
        sock = await open_tcp_happy(
            [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")],
            port,
            mark=0,
            timeout=5,
        )
        with sock:
            assert sock.family == socket.AF_INET6
        await trio.sleep(0.3)  # past the attempt delay: IPv4 must never have been tried
        assert (accepted(v6), accepted(v4)) == (1, 0)


async def test_real_blackholed_ipv6_falls_back_to_ipv4_and_closes_the_loser() -> None:
    hole, filler = blackhole_v6()
    port = hole.getsockname()[1]
    v4 = listener("127.0.0.1", port)
    with hole, filler, v4:
        start = trio.current_time()
        sock = await open_tcp_happy(
            [ipaddress.ip_address("::1"), ipaddress.ip_address("127.0.0.1")],
            port,
            mark=0,
            timeout=5,
        )
        elapsed = trio.current_time() - start
        with sock:
            assert sock.family == socket.AF_INET
            assert 0.25 <= elapsed < 2.0  # generous upper bound: the machine is shared
        # the IPv6 attempt is gone: no socket of ours is still in SYN-SENT to the hole
        await trio.sleep(0.05)
        out = Path("/proc/net/tcp6").read_text().splitlines()[1:]  # noqa: ASYNC240
        syn_sent = [
            line
            for line in out
            if line.split()[3] == "02" and line.split()[2].endswith(f":{port:04X}")
        ]
        assert syn_sent == []


async def test_open_tcp_host_literal_and_name() -> None:
    v4 = listener("127.0.0.1")
    port = v4.getsockname()[1]
    asked: list[str] = []

    class Resolver:
        async def resolve(self, domain: str) -> list[IPAddress]:
            asked.append(domain)
            return [ipaddress.ip_address("127.0.0.1")] if domain == "proxy.test" else []

    with v4:
        with await open_tcp_host("127.0.0.1", port, resolver=Resolver(), mark=0, timeout=5):
            pass
        assert asked == []  # a literal is never looked up
        with await open_tcp_host("proxy.test", port, resolver=Resolver(), mark=0, timeout=5):
            pass
        assert asked == ["proxy.test"]
        with pytest.raises(DialError, match=r"cannot resolve 'nowhere\.test'"):
            await open_tcp_host("nowhere.test", port, resolver=Resolver(), mark=0, timeout=5)


async def test_recv_message_keeps_what_follows(tcp_pairs: object) -> None:
    a, b = tcp_pairs()  # type: ignore[operator]
    reply = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38"
    for byte in reply[:3]:  # arriving in pieces
        b.send(bytes([byte]))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep, 0)
        b.send(reply[3:] + b"banner")
        message, rest = await recv_message(a, parse_reply, peer="socks proxy x")
    assert message.code == 0 and message.port == 1080
    assert rest == b"banner"


async def test_recv_message_errors(tcp_pairs: object) -> None:
    a, b = tcp_pairs()  # type: ignore[operator]
    b.send(b"\x05\x00\x00")
    b.close()
    with pytest.raises(
        DialError, match=r"^socks proxy x: closed the connection during the handshake$"
    ):
        await recv_message(a, parse_reply, peer="socks proxy x")
    c, d = tcp_pairs()  # type: ignore[operator]
    d.send(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(DialError, match=r"^socks proxy x: bad reply: bad reply version 0x48$"):
        await recv_message(c, parse_reply, peer="socks proxy x")
