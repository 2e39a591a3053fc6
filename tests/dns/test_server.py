"""The dns.listen listener on loopback: UDP and TCP, garbage, bounded work."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

import pytest
import trio
from dnslib import RCODE, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_tproxy.config import ConfigErrors, parse_config_text
from trio_tproxy.config.values import HostPort
from trio_tproxy.dns.server import DnsListener, open_dns_listener
from trio_tproxy.dns.service import DnsService
from trio_tproxy.inbound.sockopt import SocketSetupError

from .conftest import config_text
from .fake_dns import FakeDns
from .servers import free_port

MakeService = Callable[..., DnsService]
ZONE = {"x.com": [("A", "10.2.0.2")], "t.com": [("TXT", "hello")]}


async def udp_ask(port: int, data: bytes, timeout: float = 2.0) -> bytes | None:  # noqa: ASYNC109
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.connect(("127.0.0.1", port))
        await sock.send(data)
        with trio.move_on_after(timeout):
            return await sock.recv(65535)
    return None


async def tcp_ask(port: int, messages: list[bytes]) -> list[bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"".join(struct.pack(">H", len(m)) + m for m in messages))
        buffer, replies = b"", []
        with trio.fail_after(5):
            while len(replies) < len(messages):
                buffer += await stream.receive_some()
                while len(buffer) >= 2 and len(buffer) >= 2 + struct.unpack(">H", buffer[:2])[0]:
                    n = struct.unpack(">H", buffer[:2])[0]
                    replies.append(buffer[2 : 2 + n])
                    buffer = buffer[2 + n :]
    return replies


def open_listener() -> DnsListener:
    """On a free port (another test may take the one we picked: try again)."""
    for attempt in range(10):
        try:
            return open_dns_listener(HostPort("127.0.0.1", free_port()))
        except SocketSetupError:
            if attempt == 9:
                raise
    raise AssertionError("unreachable")


def q(name: str, qtype: str = "A") -> bytes:
    return DNSRecord.question(name, qtype).pack()


@pytest.fixture
async def listener(make_service: MakeService, fake_dns: Callable[..., FakeDns],
                   nursery: trio.Nursery) -> tuple[DnsListener, FakeDns]:  # fmt: skip
    upstream = fake_dns(ZONE)
    service = make_service(f'[dns.hosts]\n"router.lan" = "192.168.1.1"\n'
                           f'[[dns.servers]]\naddress = "127.0.0.1:{upstream.port}"\n')  # fmt: skip
    dns = open_listener()
    nursery.start_soon(dns.serve, lambda: service)
    return dns, upstream


async def test_udp_and_tcp_answers(listener: tuple[DnsListener, FakeDns]) -> None:
    dns, upstream = listener
    port = dns.where.port
    reply = DNSRecord.parse(await udp_ask(port, q("x.com")) or b"")
    assert [str(rr.rdata) for rr in reply.rr] == ["10.2.0.2"]
    replies = await tcp_ask(port, [q("x.com"), q("router.lan"), q("t.com", "TXT")])
    assert [str(DNSRecord.parse(r).rr[0].rdata) for r in replies] == [
        "10.2.0.2", "192.168.1.1", '"hello"',
    ]  # fmt: skip
    assert upstream.count("x.com") == 1  # the TCP query was a cache hit


async def test_garbage_gets_formerr_or_nothing_and_the_listener_lives(
    listener: tuple[DnsListener, FakeDns],
) -> None:
    dns, _ = listener
    port = dns.where.port
    formerr = await udp_ask(port, b"\xab\xcd\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07")
    assert formerr is not None and DNSRecord.parse(formerr).header.rcode == RCODE.FORMERR
    assert await udp_ask(port, b"\x01", timeout=0.3) is None
    (tcp_formerr,) = await tcp_ask(port, [b"\xab\xcd\x01\x00\x00\x01" + b"\x00" * 6 + b"\x07"])
    assert DNSRecord.parse(tcp_formerr).header.rcode == RCODE.FORMERR
    reply = DNSRecord.parse(await udp_ask(port, q("x.com")) or b"")
    assert reply.header.rcode == RCODE.NOERROR


@settings(
    max_examples=5,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(batch=st.lists(st.binary(max_size=120), min_size=30, max_size=60))
def test_hypothesis_garbage_over_udp_and_tcp(
    make_service: MakeService, fake_dns: Callable[..., FakeDns], batch: list[bytes]
) -> None:
    # garbage that happens to be a valid query goes to a loopback server (NXDOMAIN for
    # all), never to the system resolver
    upstream = fake_dns({})  # one per example (five), all stopped at teardown
    service = make_service(f'[dns.hosts]\n"router.lan" = "192.168.1.1"\n'
                           f'[[dns.servers]]\naddress = "127.0.0.1:{upstream.port}"\n'
                           'timeout = "200ms"\n')  # fmt: skip

    async def main() -> None:
        dns = open_listener()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(dns.serve, lambda: service)
                sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                with sock:
                    await sock.connect(("127.0.0.1", dns.where.port))
                    for garbage in batch:
                        await sock.send(garbage)
                    with trio.move_on_after(0.3):
                        while True:  # whatever comes back is a well-formed response
                            assert DNSRecord.parse(await sock.recv(65535)).header.qr == 1
                stream = await trio.open_tcp_stream("127.0.0.1", dns.where.port)
                async with stream:
                    for garbage in batch:
                        await stream.send_all(struct.pack(">H", len(garbage)) + garbage)
                # the listener survived all of it and still answers
                (reply,) = await tcp_ask(dns.where.port, [q("router.lan")])
                assert str(DNSRecord.parse(reply).rr[0].rdata) == "192.168.1.1"
                reply = DNSRecord.parse(await udp_ask(dns.where.port, q("router.lan")) or b"")
                assert str(reply.rr[0].rdata) == "192.168.1.1"
                nursery.cancel_scope.cancel()
        finally:
            dns.close()

    trio.run(main)


def test_port_in_use_is_one_clear_error() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        with pytest.raises(SocketSetupError, match="address already in use"):
            open_dns_listener(HostPort("127.0.0.1", port))


def test_tls_ca_on_a_plain_server_is_a_config_error(rules_dir) -> None:  # type: ignore[no-untyped-def]
    text = config_text('[[dns.servers]]\naddress = "1.1.1.1"\ntls_ca = "/x.pem"\n', rules_dir)
    with pytest.raises(ConfigErrors) as err:
        parse_config_text(text)
    assert "tls_ca is for tls:// and https:// servers @ $.dns.servers[0].tls_ca" in str(err.value)
