"""dns/exchange.py byte by byte: our queries to upstreams out, their answers in."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from dnslib import AAAA, CNAME, QTYPE, RCODE, RR, SOA, TXT, A, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_tproxy.dns import exchange as x
from trio_tproxy.dns import message as m

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def question(name: str, qtype: str = "A") -> bytes:
    return DNSRecord.question(name, qtype).pack()


def test_build_query_is_what_v2ray_sends() -> None:
    data = x.build_query("example.org", m.QTYPE_AAAA, 0x1234)
    assert data == (
        bytes.fromhex("1234 0100 0001 0000 0000 0001")
        + b"\x07example\x03org\x00" + struct.pack(">HH", 28, 1)
        + b"\x00" + struct.pack(">HHIH", 41, 1350, 0, 0)
    )  # fmt: skip
    parsed = DNSRecord.parse(data)
    assert parsed.header.rd == 1 and parsed.ar[0].rdata == []  # no client subnet


def test_build_query_with_client_subnet() -> None:
    data = x.build_query("a.b", 1, 1, client_subnet=ipaddress.ip_network("198.51.100.0/24"))
    opt = DNSRecord.parse(data).ar[0]
    assert opt.rdata[0].code == 8
    assert opt.rdata[0].data == bytes.fromhex("0001 18 00 c63364")


@pytest.mark.parametrize("name", ["a" * 64 + ".com", ".".join(["abcdefgh"] * 40)])
def test_build_query_rejects_bad_names(name: str) -> None:
    with pytest.raises(m.BadMessage):
        x.build_query(name, 1, 1)


# -- upstream answers ---------------------------------------------------------------------


def answer_for(name: str, qtype: str, *records: RR, qid: int = 7, rcode: int = 0,
               auth: tuple[RR, ...] = ()) -> bytes:  # fmt: skip
    record = DNSRecord.question(name, qtype)
    record.header.id = qid
    reply = record.reply()
    reply.header.rcode = rcode
    for rr in records:
        reply.add_answer(rr)
    for rr in auth:
        reply.add_auth(rr)
    return reply.pack()


def test_answer_addresses_and_min_ttl_through_a_cname() -> None:
    data = answer_for(
        "www.example.org", "A",
        RR("www.example.org", QTYPE.CNAME, rdata=CNAME("cdn.example.net"), ttl=600),
        RR("cdn.example.net", QTYPE.A, rdata=A("192.0.2.7"), ttl=120),
        RR("cdn.example.net", QTYPE.A, rdata=A("192.0.2.8"), ttl=300),
    )  # fmt: skip
    got = x.parse_answer(data, 7, "www.example.org", m.QTYPE_A)
    assert got == x.UpstreamAnswer(0, False, (ip("192.0.2.7"), ip("192.0.2.8")), 120)


def test_aaaa_answer_ignores_a_records() -> None:
    data = answer_for(
        "x.org", "AAAA",
        RR("x.org", QTYPE.A, rdata=A("192.0.2.7"), ttl=60),
        RR("x.org", QTYPE.AAAA, rdata=AAAA("2001:db8::7"), ttl=60),
    )  # fmt: skip
    assert x.parse_answer(data, 7, "x.org", m.QTYPE_AAAA).addresses == (ip("2001:db8::7"),)


def test_negative_answer_ttl_comes_from_the_soa() -> None:
    soa = RR("example.org", QTYPE.SOA, ttl=900,
             rdata=SOA("ns.example.org", "admin.example.org", (1, 2, 3, 4, 45)))  # fmt: skip
    nx = answer_for("nope.example.org", "A", rcode=RCODE.NXDOMAIN, auth=(soa,))
    assert x.parse_answer(nx, 7, "nope.example.org", 1) == x.UpstreamAnswer(3, False, (), 45)
    nodata = answer_for("x.example.org", "AAAA")
    assert x.parse_answer(nodata, 7, "x.example.org", 28).ttl == x.NEGATIVE_TTL_DEFAULT


@pytest.mark.parametrize(
    ("data", "qid", "name", "qtype"),
    [
        (answer_for("a.org", "A", qid=8), 7, "a.org", 1),  # another ID
        (answer_for("b.org", "A"), 7, "a.org", 1),  # another name
        (answer_for("a.org", "AAAA"), 7, "a.org", 1),  # another type
        (question("a.org"), 0, "a.org", 1),  # a query, not an answer
        (b"\x00\x07\x81\x80", 7, "a.org", 1),  # cut short
    ],
)
def test_answers_to_other_questions_are_rejected(data: bytes, qid: int, name: str,
                                                  qtype: int) -> None:  # fmt: skip
    if data[:2] == b"\x00\x00" or data.startswith(b"\x00\x07\x81"):
        qid = int.from_bytes(data[:2], "big")
    with pytest.raises(m.BadMessage):
        x.parse_answer(data, qid, name, qtype)


def test_truncated_answer_is_reported_as_such() -> None:
    record = DNSRecord.parse(answer_for("a.org", "A"))
    record.header.tc = 1
    got = x.parse_answer(record.pack(), 7, "a.org", 1)
    assert got.truncated and got.addresses == ()


@FUZZ
@given(st.binary(max_size=200))
def test_garbage_answers_raise_only_bad_message(data: bytes) -> None:
    with contextlib.suppress(m.BadMessage):
        x.parse_answer(data, int.from_bytes(data[:2] or b"\0\0", "big"), "a.org", 1)
    with contextlib.suppress(m.BadMessage):
        x.forwarded_ttl(data)


def test_forwarded_answers_are_checked_and_aged() -> None:
    q = m.parse_query(question("T.example", "TXT"))
    reply = answer_for("t.example", "TXT", RR("t.example", QTYPE.TXT, rdata=TXT("x"), ttl=100),
                       qid=99)  # fmt: skip
    x.check_forwarded(reply, 99, q)  # the question matches case-insensitively
    with pytest.raises(m.BadMessage):
        x.check_forwarded(reply, 98, q)
    assert x.forwarded_ttl(reply) == 100
    aged = DNSRecord.parse(x.age_ttls(reply, 30))
    assert aged.rr[0].ttl == 70
    assert DNSRecord.parse(x.age_ttls(reply, 1000)).rr[0].ttl == 0
    assert m.with_id(reply, 5)[:2] == b"\x00\x05" and m.with_id(reply, 5)[2:] == reply[2:]
