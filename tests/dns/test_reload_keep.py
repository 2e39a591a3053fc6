"""A reload keeps what the DNS splitter learnt (issue 13, defect 5): the cache and the
address -> domain map survive; only answers the new configuration invalidates go."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from dnslib import DNSRecord

from trio_tproxy.dns.service import DnsService

from .fake_dns import FakeDns
from .test_service import DOMESTIC, FOREIGN, ask, query, server, split_config

MakeService = Callable[..., DnsService]
MakeFake = Callable[..., FakeDns]


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


async def warm(service: DnsService) -> None:
    for name in ("a.cn", "x.com"):
        await ask(service, name)
    reply = await service.answer(query("t.com", "TXT"), udp=True)  # a forwarded type
    assert reply is not None and b"foreign" in reply


async def test_an_unchanged_dns_config_keeps_every_answer_and_the_map(
    make_service: MakeService, fake_dns: MakeFake
) -> None:
    domestic, foreign = fake_dns(DOMESTIC), fake_dns(FOREIGN)
    old = make_service(split_config(domestic, foreign))
    await warm(old)
    new = make_service(split_config(domestic, foreign))
    new.adopt(old)
    assert new.reverse is not None and new.reverse.lookup(ip("10.2.0.2")) == "x.com"
    assert new.reverse.lookup(ip("10.1.0.1")) == "a.cn"
    # answered from the kept cache: the upstreams are not asked again
    assert new.answer_now(query("x.com"), udp=True) is not None
    assert new.answer_now(query("a.cn"), udp=True) is not None
    assert new.answer_now(query("t.com", "TXT"), udp=True) is not None
    assert [str(rr.rdata) for rr in (await ask(new, "x.com")).rr] == ["10.2.0.2"]
    assert (domestic.count("a.cn"), foreign.count("x.com"), foreign.count("t.com", "TXT")) == (1, 1, 1)


async def test_answers_of_a_removed_server_are_dropped_the_others_kept(
    make_service: MakeService, fake_dns: MakeFake
) -> None:
    domestic, foreign = fake_dns(DOMESTIC), fake_dns(FOREIGN)
    old = make_service(split_config(domestic, foreign))
    await warm(old)
    new = make_service(server(f"127.0.0.1:{foreign.port}"))  # the domestic server is gone
    new.adopt(old)
    assert new.answer_now(query("x.com"), udp=True) is not None  # same server, same walk
    assert new.answer_now(query("t.com", "TXT"), udp=True) is not None
    assert new.answer_now(query("a.cn"), udp=True) is None  # its server no longer exists
    assert [str(rr.rdata) for rr in (await ask(new, "a.cn")).rr] == ["10.2.0.1"]
    assert foreign.count("a.cn") == 1 and foreign.count("x.com") == 1
    assert new.reverse is not None and new.reverse.lookup(ip("10.1.0.1")) == "a.cn"


async def test_a_server_configured_differently_or_now_preceded_loses_its_answers(
    make_service: MakeService, fake_dns: MakeFake
) -> None:
    domestic, foreign = fake_dns(DOMESTIC), fake_dns(FOREIGN)
    old = make_service(split_config(domestic, foreign))
    await warm(old)
    changed = make_service("\n".join([  # the domestic server now also has "x.com"
        server(f"127.0.0.1:{domestic.port}", 'domains = ["domain:cn", "full:x.com"]',
               "skip_fallback = true"),
        server(f"127.0.0.1:{foreign.port}"),
    ]))  # fmt: skip
    changed.adopt(old)
    assert changed.answer_now(query("a.cn"), udp=True) is None  # its server changed
    assert changed.answer_now(query("x.com"), udp=True) is None  # now asked of another first
    assert changed.answer_now(query("t.com", "TXT"), udp=True) is not None  # walk unchanged
    assert [str(rr.rdata) for rr in (await ask(changed, "x.com")).rr] == ["10.1.0.2"]


async def test_cache_or_reverse_mapping_turned_off_keeps_nothing_of_it(
    make_service: MakeService, fake_dns: MakeFake
) -> None:
    domestic, foreign = fake_dns(DOMESTIC), fake_dns(FOREIGN)
    old = make_service(split_config(domestic, foreign))
    await warm(old)
    new = make_service(split_config(domestic, foreign, "cache = false", "reverse_mapping = false"))
    new.adopt(old)
    assert new.reverse is None
    assert len(new.cache) == 0
    assert new.answer_now(query("x.com"), udp=True) is None


async def test_kept_answers_keep_their_expiry(make_service: MakeService,
                                              fake_dns: MakeFake) -> None:  # fmt: skip
    domestic, foreign = fake_dns(DOMESTIC), fake_dns(FOREIGN, ttl=300)
    old = make_service(split_config(domestic, foreign))
    await warm(old)
    new = make_service(split_config(domestic, foreign))
    new.adopt(old)
    reply = new.answer_now(query("x.com"), udp=True)
    assert reply is not None and 0 < DNSRecord.parse(reply).rr[0].ttl <= 300


async def test_a_server_reached_through_a_changed_outbound_loses_its_answers(
    make_service: MakeService, fake_dns: MakeFake
) -> None:
    foreign = fake_dns(FOREIGN)
    dns = server(f"127.0.0.1:{foreign.port}", 'outbound = "via"')
    old = make_service(dns, '[[outbounds]]\ntag = "via"\ntype = "direct"\n')
    await ask(old, "x.com")
    same = make_service(dns, '[[outbounds]]\ntag = "via"\ntype = "direct"\n')
    same.adopt(old)
    assert same.answer_now(query("x.com"), udp=True) is not None
    changed = make_service(dns, '[[outbounds]]\ntag = "via"\ntype = "direct"\n'
                                'domain_strategy = "use_ip"\n')  # fmt: skip
    changed.adopt(old)
    assert changed.answer_now(query("x.com"), udp=True) is None
