"""The dns outbound: hijacked DNS over TCP (length-prefixed) and UDP (issue 5's link)."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable

import trio
from dnslib import RCODE, DNSRecord

from trio_tproxy.config import DnsOutbound as DnsConfig
from trio_tproxy.dns.service import DnsService
from trio_tproxy.outbound import FlowContext, TcpFlow
from trio_tproxy.outbound.base import UdpRequest
from trio_tproxy.outbound.dns import MAX_PENDING, DnsOutbound
from trio_tproxy.relay import BufferPool, RelayTimeouts
from trio_tproxy.session import carry

from .fake_dns import FakeDns

ZONE = {"x.com": [("A", "10.2.0.2")], "t.com": [("TXT", "hello")]}


def q(name: str, qtype: str = "A", qid: int = 7) -> bytes:
    record = DNSRecord.question(name, qtype)
    record.header.id = qid
    return record.pack()


def framed(*messages: bytes) -> bytes:
    return b"".join(struct.pack(">H", len(m)) + m for m in messages)


def outbound_for(service: DnsService) -> DnsOutbound:
    outbound = DnsOutbound(DnsConfig(tag="dns-out"))  # type: ignore[arg-type]
    outbound.attach(service)
    return outbound


async def test_tcp_flow_answers_every_message_including_the_sniffed_prefix(
    make_service: Callable[..., DnsService], fake_dns: Callable[..., FakeDns]
) -> None:
    upstream = fake_dns(ZONE)
    service = make_service(f'[[dns.servers]]\naddress = "127.0.0.1:{upstream.port}"\n')
    client, ours = socket.socketpair()
    ours.setblocking(False)
    ctx = FlowContext(BufferPool(4096), RelayTimeouts(idle=5), handshake_timeout=5)
    data = framed(
        q("x.com", qid=1), b"\x00\x09\x01\x00\x00\x01" + bytes(6), q("t.com", "TXT", qid=2)
    )
    # the session read the first 5 bytes while sniffing: they come as the prefix
    flow = TcpFlow(ours, (ipaddress.ip_address("192.0.2.53"), 53), None, data[:5], ctx)
    client.sendall(data[5:])
    client.shutdown(socket.SHUT_WR)
    await carry(flow, outbound_for(service))
    ours.close()
    replies = []
    buffer = b""
    while chunk := client.recv(65535):
        buffer += chunk
    while buffer:
        (n,) = struct.unpack(">H", buffer[:2])
        replies.append(DNSRecord.parse(buffer[2 : 2 + n]))
        buffer = buffer[2 + n :]
    client.close()
    assert [r.header.id for r in replies] == [1, 9, 2]
    assert str(replies[0].rr[0].rdata) == "10.2.0.2"
    assert replies[1].header.rcode == RCODE.FORMERR
    assert str(replies[2].rr[0].rdata) == '"hello"'
    assert flow.stats.outcome == "dns: 3 answered"
    assert flow.stats.up == len(data) and flow.stats.down > 0


async def test_udp_link_answers_from_the_address_asked(
    make_service: Callable[..., DnsService], fake_dns: Callable[..., FakeDns]
) -> None:
    upstream = fake_dns(ZONE)
    service = make_service(f'[[dns.servers]]\naddress = "127.0.0.1:{upstream.port}"\n')
    request = UdpRequest(("10.77.1.2", 40000), ("8.8.8.8", 53), bytearray(65535), 5.0)
    link = await outbound_for(service).open_udp(request)
    got: list[tuple[DNSRecord, tuple[str, int]]] = []
    arrived = trio.Event()

    def deliver(payload: memoryview, remote: tuple[str, int]) -> None:
        got.append((DNSRecord.parse(bytes(payload)), remote))
        arrived.set()

    async def until(count: int) -> None:
        nonlocal arrived
        with trio.fail_after(5):
            while len(got) < count:
                await arrived.wait()
                arrived = trio.Event()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.receive, deliver)
        assert link.send(memoryview(q("x.com", qid=1)), ("8.8.8.8", 53), None) is None
        assert link.send(memoryview(b"garbage!" * 2), ("8.8.8.8", 53), None) is None
        assert link.send(memoryview(q("t.com", "TXT", qid=3)), ("1.1.1.1", 53), None) is None
        await until(3)
        assert link.send(memoryview(q("x.com", qid=4)), ("9.9.9.9", 53), None) is None  # cached
        await until(4)
        link.close()
    by_id = {record.header.id: (record, remote) for record, remote in got}
    assert str(by_id[1][0].rr[0].rdata) == "10.2.0.2" and by_id[1][1] == ("8.8.8.8", 53)
    assert by_id[3][1] == ("1.1.1.1", 53)
    assert by_id[4][1] == ("9.9.9.9", 53)
    assert by_id[int.from_bytes(b"ga", "big")][0].header.rcode == RCODE.FORMERR
    assert upstream.count("x.com") == 1
    assert link.send(memoryview(q("x.com")), ("8.8.8.8", 53), None) == "dns: link closed"


async def test_udp_link_bounds_waiting_queries(make_service: Callable[..., DnsService],
                                              fake_dns: Callable[..., FakeDns]) -> None:  # fmt: skip
    silent = fake_dns(ZONE, silent=True)
    service = make_service(f'[[dns.servers]]\naddress = "127.0.0.1:{silent.port}"\n')
    link = await outbound_for(service).open_udp(
        UdpRequest(("10.77.1.2", 1), ("8.8.8.8", 53), bytearray(10), 5.0)
    )
    # nobody receives yet: the channel holds MAX_PENDING, then refuses without blocking
    reasons = [link.send(memoryview(q(f"n{i}.com")), ("8.8.8.8", 53), None)
               for i in range(MAX_PENDING + 3)]  # fmt: skip
    assert reasons[:MAX_PENDING] == [None] * MAX_PENDING
    assert all(r is not None and "wait" in r for r in reasons[MAX_PENDING:])
    link.close()
