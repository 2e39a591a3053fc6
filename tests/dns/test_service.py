"""The splitter against small real DNS servers on loopback (no root needed)."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

import pytest
import trio
from dnslib import EDNS0, QTYPE, RCODE, DNSRecord

from trio_tproxy.dns.service import DnsService

from .fake_dns import FakeDns

MakeService = Callable[..., DnsService]
MakeFake = Callable[..., FakeDns]

DOMESTIC = {"a.cn": [("A", "10.1.0.1"), ("AAAA", "fd01::1")], "x.com": [("A", "10.1.0.2")],
            "t.cn": [("TXT", "domestic")]}  # fmt: skip
FOREIGN = {"a.cn": [("A", "10.2.0.1")], "x.com": [("A", "10.2.0.2"), ("AAAA", "fd02::2")],
           "t.com": [("TXT", "foreign")], "t.cn": [("TXT", "foreign")]}  # fmt: skip


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def server(address: str, *lines: str) -> str:
    return "\n".join(["[[dns.servers]]", f'address = "{address}"', *lines])


def split_config(domestic: FakeDns, foreign: FakeDns, *extra: str) -> str:
    return "\n".join([
        *extra,
        server(f"127.0.0.1:{domestic.port}", 'domains = ["domain:cn"]', "skip_fallback = true"),
        server(f"127.0.0.1:{foreign.port}"),
    ])  # fmt: skip


def query(name: str, qtype: str = "A", qid: int = 4242) -> bytes:
    record = DNSRecord.question(name, qtype)
    record.header.id = qid
    return record.pack()


async def ask(service: DnsService, name: str, qtype: str = "A") -> DNSRecord:
    reply = await service.answer(query(name, qtype), udp=True)
    assert reply is not None
    return DNSRecord.parse(reply)


def addresses(record: DNSRecord) -> list[str]:
    return [str(rr.rdata) for rr in record.rr]


async def test_each_name_goes_to_its_resolver(
    make_service: MakeService, fake_dns: MakeFake
) -> None:
    domestic, foreign = fake_dns(DOMESTIC), fake_dns(FOREIGN)
    service = make_service(split_config(domestic, foreign))
    cn = await ask(service, "A.CN")
    assert addresses(cn) == ["10.1.0.1"]
    assert (cn.header.id, cn.header.qr, cn.header.rd, cn.header.ra) == (4242, 1, 1, 1)
    assert str(cn.q.qname) == "A.CN."
    assert addresses(await ask(service, "x.com")) == ["10.2.0.2"]
    assert addresses(await ask(service, "x.com", "AAAA")) == ["fd02::2"]
    assert (domestic.count("a.cn"), domestic.count("x.com")) == (1, 0)
    assert (foreign.count("a.cn"), foreign.count("x.com")) == (0, 1)
    assert await service.resolve("a.cn") == (ip("10.1.0.1"), ip("fd01::1"))


async def test_cache_answers_without_asking_again(make_service: MakeService,
                                                  fake_dns: MakeFake) -> None:  # fmt: skip
    domestic, foreign = fake_dns(DOMESTIC), fake_dns(FOREIGN, ttl=300)
    service = make_service(split_config(domestic, foreign))
    first = await ask(service, "x.com")
    assert first.rr[0].ttl == 300
    assert service.answer_now(query("x.com"), udp=True) is not None  # the listener fast path
    for _ in range(3):
        assert addresses(await ask(service, "x.com")) == ["10.2.0.2"]
    assert foreign.count("x.com") == 1


async def test_cache_disabled_asks_every_time(make_service: MakeService,
                                              fake_dns: MakeFake) -> None:  # fmt: skip
    domestic, foreign = fake_dns(DOMESTIC), fake_dns(FOREIGN)
    service = make_service(split_config(domestic, foreign, "cache = false"))
    for _ in range(3):
        await ask(service, "x.com")
    assert foreign.count("x.com") == 3
    assert service.answer_now(query("x.com"), udp=True) is None


async def test_concurrent_identical_queries_share_one_upstream_query(
    make_service: MakeService, fake_dns: MakeFake
) -> None:
    domestic, foreign = fake_dns(DOMESTIC), fake_dns(FOREIGN)
    service = make_service(split_config(domestic, foreign))
    answers: list[list[str]] = []

    async def one() -> None:
        answers.append(addresses(await ask(service, "x.com")))

    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(one)
    assert answers == [["10.2.0.2"]] * 20
    assert foreign.count("x.com") == 1


async def test_expect_ips_mismatch_falls_through(make_service: MakeService,
                                                 fake_dns: MakeFake) -> None:  # fmt: skip
    domestic, foreign = fake_dns(DOMESTIC), fake_dns(FOREIGN)
    service = make_service("\n".join([
        server(f"127.0.0.1:{domestic.port}", 'expect_ips = ["10.1.0.0/16"]'),
        server(f"127.0.0.1:{foreign.port}"),
    ]))  # fmt: skip
    domestic.zone["x.com"] = [("A", "203.0.113.9")]  # a "polluted" answer
    assert addresses(await ask(service, "x.com")) == ["10.2.0.2"]
    assert addresses(await ask(service, "a.cn")) == ["10.1.0.1"]  # inside: kept
    assert (domestic.count("x.com"), foreign.count("x.com")) == (1, 1)
    assert foreign.count("a.cn") == 0


async def test_expect_ips_filters_mixed_answers(make_service: MakeService,
                                                fake_dns: MakeFake) -> None:  # fmt: skip
    domestic = fake_dns({"m.cn": [("A", "10.1.0.7"), ("A", "203.0.113.7")]})
    service = make_service(server(f"127.0.0.1:{domestic.port}", 'expect_ips = ["10.0.0.0/8"]'))
    assert addresses(await ask(service, "m.cn")) == ["10.1.0.7"]


async def test_a_silent_server_times_out_and_the_next_answers(
    make_service: MakeService, fake_dns: MakeFake
) -> None:
    silent, foreign = fake_dns(DOMESTIC, silent=True), fake_dns(FOREIGN)
    service = make_service("\n".join([
        server(f"127.0.0.1:{silent.port}", 'timeout = "300ms"'),
        server(f"127.0.0.1:{foreign.port}"),
    ]))  # fmt: skip
    started = trio.current_time()
    assert addresses(await ask(service, "x.com")) == ["10.2.0.2"]
    assert 0.3 <= trio.current_time() - started < 3
    assert silent.count("x.com") == 1


async def test_a_closed_port_fails_fast_and_the_next_answers(
    make_service: MakeService, fake_dns: MakeFake
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    foreign = fake_dns(FOREIGN)
    service = make_service("\n".join([
        server(f"127.0.0.1:{dead_port}"),
        server(f"tcp://127.0.0.1:{dead_port}"),
        server(f"127.0.0.1:{foreign.port}"),
    ]))  # fmt: skip
    started = trio.current_time()
    assert addresses(await ask(service, "x.com")) == ["10.2.0.2"]
    assert trio.current_time() - started < 1  # ICMP / RST: no timeout to wait for


async def test_garbage_from_a_server_moves_on(make_service: MakeService,
                                              fake_dns: MakeFake) -> None:  # fmt: skip
    broken, foreign = fake_dns(DOMESTIC, garbage=True), fake_dns(FOREIGN)
    service = make_service("\n".join([
        server(f"tcp://127.0.0.1:{broken.port}"),
        server(f"127.0.0.1:{foreign.port}"),
    ]))  # fmt: skip
    assert addresses(await ask(service, "x.com")) == ["10.2.0.2"]


async def test_truncated_udp_answer_is_asked_again_over_tcp(
    make_service: MakeService, fake_dns: MakeFake
) -> None:
    big = {"big.example": [("A", f"10.9.0.{i}") for i in range(1, 60)]}
    truncating = fake_dns(big, truncate_udp=True)
    service = make_service(server(f"127.0.0.1:{truncating.port}"))
    got = await service.lookup("big.example", 1)
    assert len(got.addresses) == 59
    assert (truncating.count("big.example", "A", "udp"),
            truncating.count("big.example", "A", "tcp")) == (1, 1)  # fmt: skip
    # and a client without EDNS gets TC=1 from us in turn (the answer is > 512 bytes)
    reply = DNSRecord.parse(await service.answer(query("big.example"), udp=True) or b"")
    assert reply.header.tc == 1
    reply = DNSRecord.parse(await service.answer(query("big.example"), udp=False) or b"")
    assert len(reply.rr) == 59


async def test_rcode_answers_are_final_and_negative_ones_cached(
    make_service: MakeService, fake_dns: MakeFake
) -> None:
    first, second = fake_dns({}), fake_dns(FOREIGN)
    service = make_service("\n".join([
        server(f"127.0.0.1:{first.port}"), server(f"127.0.0.1:{second.port}"),
    ]))  # fmt: skip
    for _ in range(2):
        nx = await ask(service, "x.com")
        assert nx.header.rcode == RCODE.NXDOMAIN and nx.rr == []
    assert (first.count("x.com"), second.count("x.com")) == (1, 0)


async def test_all_servers_failing_is_servfail(make_service: MakeService,
                                               fake_dns: MakeFake) -> None:  # fmt: skip
    silent = fake_dns(FOREIGN, silent=True)
    service = make_service(server(f"127.0.0.1:{silent.port}", 'timeout = "200ms"'))
    assert (await ask(service, "x.com")).header.rcode == RCODE.SERVFAIL
    assert await service.resolve("x.com") == ()
    assert (await ask(service, "x.com")).header.rcode == RCODE.SERVFAIL
    assert silent.count("x.com") == 3  # failures are not cached: three asks of A


async def test_hosts_answer_without_a_server(make_service: MakeService,
                                             fake_dns: MakeFake) -> None:  # fmt: skip
    foreign = fake_dns({**FOREIGN, "real.example": [("A", "10.2.0.9")]})
    service = make_service("\n".join([
        "[dns.hosts]",
        '"router.lan" = "192.168.1.1"',
        '"domain:internal.example" = ["10.0.0.5", "fd00::5"]',
        '"shortcut.example" = "real.example"',
        server(f"127.0.0.1:{foreign.port}"),
    ]))  # fmt: skip
    assert addresses(await ask(service, "router.lan")) == ["192.168.1.1"]
    assert (await ask(service, "router.lan", "AAAA")).rr == []
    assert addresses(await ask(service, "db.internal.example", "AAAA")) == ["fd00::5"]
    assert addresses(await ask(service, "shortcut.example")) == ["10.2.0.9"]
    assert foreign.count("router.lan") + foreign.count("db.internal.example") == 0
    assert foreign.count("real.example") == 1


async def test_query_strategy_ipv4(make_service: MakeService, fake_dns: MakeFake) -> None:
    foreign = fake_dns(FOREIGN)
    service = make_service("\n".join([
        'query_strategy = "use_ipv4"', server(f"127.0.0.1:{foreign.port}"),
    ]))  # fmt: skip
    assert await service.resolve("x.com") == (ip("10.2.0.2"),)
    empty = await ask(service, "x.com", "AAAA")
    assert (empty.header.rcode, empty.rr) == (RCODE.NOERROR, [])
    assert foreign.count("x.com", "AAAA") == 0


async def test_other_types_are_forwarded_along_the_split(
    make_service: MakeService, fake_dns: MakeFake
) -> None:
    domestic, foreign = fake_dns(DOMESTIC), fake_dns(FOREIGN)
    service = make_service(split_config(domestic, foreign))
    txt = await ask(service, "t.cn", "TXT")
    assert (txt.header.id, [str(rr.rdata) for rr in txt.rr]) == (4242, ['"domestic"'])
    txt = await ask(service, "t.com", "TXT")
    assert [str(rr.rdata) for rr in txt.rr] == ['"foreign"']
    again = await ask(service, "t.com", "TXT")  # from the cache, TTL aged, ID ours
    assert again.rr[0].ttl <= 300 and again.header.id == 4242
    assert foreign.count("t.com", "TXT") == 1
    assert domestic.count("t.com", "TXT") == 0


async def test_malformed_queries(make_service: MakeService, fake_dns: MakeFake) -> None:
    service = make_service(server(f"127.0.0.1:{fake_dns(FOREIGN).port}"))
    formerr = await service.answer(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03abc",
                                   udp=True)  # fmt: skip
    assert formerr is not None
    assert DNSRecord.parse(formerr).header.rcode == RCODE.FORMERR
    assert await service.answer(b"\x12\x34", udp=True) is None
    response = DNSRecord.parse(query("x.com")).reply().pack()
    assert await service.answer(response, udp=True) is None  # never answer an answer
    bad_name = await service.answer(query("bad name.example"), udp=True)
    assert DNSRecord.parse(bad_name or b"").header.rcode == RCODE.FORMERR


async def test_edns_is_answered_with_edns(make_service: MakeService, fake_dns: MakeFake) -> None:
    service = make_service(server(f"127.0.0.1:{fake_dns(FOREIGN).port}"))
    record = DNSRecord.question("x.com")
    record.add_ar(EDNS0(udp_len=4096))
    reply = DNSRecord.parse(await service.answer(record.pack(), udp=True) or b"")
    assert [rr.rtype for rr in reply.ar] == [QTYPE.OPT]


async def test_answers_fill_the_reverse_map(make_service: MakeService,
                                            fake_dns: MakeFake) -> None:  # fmt: skip
    domestic, foreign = fake_dns(DOMESTIC), fake_dns(FOREIGN)
    service = make_service(split_config(domestic, foreign))
    await ask(service, "x.com")
    assert service.reverse is not None
    assert service.reverse.lookup(ip("10.2.0.2")) == "x.com"
    off = make_service(split_config(domestic, foreign, "reverse_mapping = false"))
    assert off.reverse is None


async def test_a_server_routed_to_block_is_skipped(make_service: MakeService,
                                                   fake_dns: MakeFake) -> None:  # fmt: skip
    # v2ray: a server without `outbound` is routed like a flow from inbound dns.tag
    domestic, foreign = fake_dns(DOMESTIC), fake_dns(FOREIGN)
    routing = f"""
[[routing.rules]]
inbound_tag = ["dns"]
ip = ["127.0.0.1"]
port = "{domestic.port}"
outbound = "block"
"""
    service = make_service("\n".join([
        server(f"127.0.0.1:{domestic.port}"), server(f"127.0.0.1:{foreign.port}"),
    ]), extra=routing)  # fmt: skip
    assert addresses(await ask(service, "x.com")) == ["10.2.0.2"]
    assert domestic.count("x.com") == 0


async def test_explicit_outbound_wins_over_routing(make_service: MakeService,
                                                   fake_dns: MakeFake) -> None:  # fmt: skip
    foreign = fake_dns(FOREIGN)
    routing = '[[routing.rules]]\ninbound_tag = ["dns"]\nnetwork = "udp"\noutbound = "block"\n'
    service = make_service(server(f"127.0.0.1:{foreign.port}", 'outbound = "direct"'),
                           extra=routing)  # fmt: skip
    assert addresses(await ask(service, "x.com")) == ["10.2.0.2"]


async def test_no_servers_means_the_system_resolver(make_service: MakeService) -> None:
    service = make_service("")
    assert service.uses_system_resolver
    assert ip("127.0.0.1") in await service.resolve("localhost")


@pytest.mark.parametrize("strategy", ["use_ip", "use_ipv6"])
async def test_resolve_merges_families(make_service: MakeService, fake_dns: MakeFake,
                                       strategy: str) -> None:  # fmt: skip
    foreign = fake_dns(FOREIGN)
    service = make_service(f'query_strategy = "{strategy}"\n' + server(f"127.0.0.1:{foreign.port}"))
    want = (ip("10.2.0.2"), ip("fd02::2")) if strategy == "use_ip" else (ip("fd02::2"),)
    assert await service.resolve("X.com.") == want


async def test_repeated_queries_reuse_a_ready_reply_briefly(
    make_service: MakeService, autojump_clock: object
) -> None:
    service = make_service('[dns.hosts]\n"router.lan" = "192.168.1.1"\n')
    first = service.answer_now(query("router.lan", qid=1), udp=True)
    again = service.answer_now(query("router.lan", qid=2), udp=True)
    assert first is not None and again is not None
    assert (first[:2], again[:2], first[2:] == again[2:]) == (b"\x00\x01", b"\x00\x02", True)
    other_case = service.answer_now(query("Router.LAN", qid=3), udp=True)
    assert other_case is not None and DNSRecord.parse(other_case).q.qname == "Router.LAN."
    assert len(service.clients.replies) == 2
    await trio.sleep(1.5)  # past the memo's lifetime: the reply is made afresh
    service.hosts = make_service('[dns.hosts]\n"router.lan" = "192.168.1.2"\n').hosts
    later = service.answer_now(query("router.lan", qid=4), udp=True)
    assert addresses(DNSRecord.parse(later or b"")) == ["192.168.1.2"]


async def test_proxy_server_names_are_resolved_only_by_direct_servers(
    make_service: MakeService, fake_dns: MakeFake
) -> None:
    """A proxy's own server name is never looked up through a proxy (it could be the one
    asking): servers routed through an outbound that is not direct are skipped."""
    proxied, direct = fake_dns(FOREIGN), fake_dns(DOMESTIC)
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    extra = (f'[[outbounds]]\ntag = "proxy"\ntype = "socks"\n'
             f'server = "127.0.0.1:{silent.getsockname()[1]}"\n')  # fmt: skip
    service = make_service("\n".join([
        server(f"127.0.0.1:{proxied.port}", 'outbound = "proxy"', 'timeout = "3s"'),
        server(f"127.0.0.1:{direct.port}"),
    ]), extra=extra)  # fmt: skip
    with trio.fail_after(1):  # the proxied server (a silent proxy) would take 3 s
        assert await service.direct.resolve("x.com") == (ip("10.1.0.2"),)
    assert proxied.count("x.com") == 0
    silent.close()


async def test_proxy_server_names_fall_back_to_the_system_resolver(
    make_service: MakeService, fake_dns: MakeFake
) -> None:
    proxied = fake_dns(FOREIGN)
    service = make_service(server(f"127.0.0.1:{proxied.port}", 'outbound = "block"'))
    assert ip("127.0.0.1") in await service.direct.resolve("localhost")
    assert proxied.count("localhost") == 0


def test_proxy_outbounds_find_their_server_without_proxies(tmp_path: object) -> None:
    from trio_tproxy.config import parse_config_text
    from trio_tproxy.resolver import LateResolver
    from trio_tproxy.runtime import Runtime

    cfg = parse_config_text("""
[[inbounds]]
tag = "in"
type = "tproxy"
port = 12345
[[outbounds]]
tag = "direct"
type = "direct"
[[outbounds]]
tag = "ss"
type = "shadowsocks"
server = "ss.example.net:8388"
method = "aes-128-gcm"
password = "pw"
[dns]
servers = [{ address = "192.0.2.53", outbound = "ss" }]
""")
    rt = Runtime.build(cfg)
    ss, direct = rt.outbounds["ss"], rt.outbounds["direct"]
    assert isinstance(ss.resolver, LateResolver) and ss.resolver.target is rt.dns.direct  # type: ignore[attr-defined]
    assert direct.resolver.target is rt.dns  # type: ignore[attr-defined]
