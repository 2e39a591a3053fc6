"""dns/message.py byte by byte: client queries in, replies out."""

from __future__ import annotations

import ipaddress
import struct
from pathlib import Path

import pytest
from dnslib import EDNS0, RCODE, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_tproxy.dns import message as m

DIG_QUERY = (Path(__file__).parents[1] / "sniff" / "fixtures" / "dns_dig.bin").read_bytes()
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def question(name: str, qtype: str = "A", *, edns: int | None = None, do: bool = False) -> bytes:
    record = DNSRecord.question(name, qtype)
    if edns is not None:
        record.add_ar(EDNS0(udp_len=edns, flags="do" if do else ""))
    return record.pack()


# -- parsing client queries -------------------------------------------------------------


def test_dig_query_parses_with_its_case_and_cookie() -> None:
    q = m.parse_query(DIG_QUERY)
    assert (q.id, q.name, q.qtype, q.qclass, q.rd) == (0x3B16, "www.example.com", 1, 1, True)
    assert q.question == DIG_QUERY[12:33]  # "www.Example.COM" A IN, as sent
    assert (q.edns_size, q.dnssec_ok) == (1232, False)
    assert q.udp_limit == 1232
    assert m.parse_query_general(DIG_QUERY) == q


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (question("Example.org."), ("example.org", 1, None, False)),
        (question("example.org", "AAAA", edns=4096, do=True), ("example.org", 28, 4096, True)),
        (question("_dmarc.example.org", "TXT"), ("_dmarc.example.org", 16, None, False)),
        (question("a.b", "MX", edns=100), ("a.b", 15, 100, False)),
    ],
)
def test_query_fields(data: bytes, expected: tuple[object, ...]) -> None:
    q = m.parse_query(data)
    assert (q.name, q.qtype, q.edns_size, q.dnssec_ok) == expected
    assert q == m.parse_query_general(data)
    assert q.raw == data


def test_small_edns_size_still_allows_512() -> None:
    assert m.parse_query(question("a.b", edns=100)).udp_limit == 512
    assert m.parse_query(question("a.b")).udp_limit == 512


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "shorter"),
        (b"\x00" * 11, "shorter"),
        (DIG_QUERY[:20], "unparsable"),
        (bytes([DIG_QUERY[0], DIG_QUERY[1], 0x81, 0x80]) + DIG_QUERY[4:], "response"),
        (DIG_QUERY[:2] + b"\x28\x00" + DIG_QUERY[4:], "opcode"),  # UPDATE
        (DIG_QUERY[:4] + b"\x00" * 8, "0 questions"),
        (DIG_QUERY[:12] + b"\xc0\x0c\x00\x01\x00\x01", "unparsable"),  # pointer loop
    ],
)
def test_malformed_queries(data: bytes, reason: str) -> None:
    with pytest.raises(m.BadMessage, match=reason):
        m.parse_query(data)


def test_two_opt_records_are_formerr() -> None:
    record = DNSRecord.question("a.b")
    record.add_ar(EDNS0())
    record.add_ar(EDNS0())
    with pytest.raises(m.BadMessage, match="OPT"):
        m.parse_query(record.pack())


def test_formerr_keeps_id_opcode_and_rd_and_never_answers_responses() -> None:
    reply = m.formerr_for(DIG_QUERY)
    assert reply == struct.pack(">HHHHHH", 0x3B16, 0x8181, 0, 0, 0, 0)
    parsed = DNSRecord.parse(reply)
    assert parsed.header.rcode == RCODE.FORMERR and parsed.header.qr == 1
    assert m.formerr_for(b"\x00" * 11) is None
    assert m.formerr_for(b"\x12\x34\x80" + b"\x00" * 9) is None  # QR set: a response


SEEDS = [DIG_QUERY, question("a.example", "AAAA", edns=512), question("x.y", "TXT")]


@st.composite
def mutated_queries(draw: st.DrawFn) -> bytes:
    base = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(base) - 1))
        base[pos] = draw(st.integers(0, 255))
    cut = draw(st.integers(0, len(base) + 4))
    return bytes(base[:cut]) + draw(st.binary(max_size=4))


@FUZZ
@given(st.one_of(st.binary(max_size=300), mutated_queries()))
def test_garbage_is_a_query_or_bad_message_and_both_parsers_agree(data: bytes) -> None:
    try:
        general = m.parse_query_general(data)
    except m.BadMessage:
        general = None
    try:
        fast = m.parse_query(data)
    except m.BadMessage:
        fast = None
    assert fast == general
    reply = m.formerr_for(data)
    assert reply is None or (len(reply) == 12 and reply[:2] == data[:2])


# -- replies -----------------------------------------------------------------------------


def test_address_reply_bytes() -> None:
    q = m.parse_query(question("Www.Example.org", "A", edns=1232))
    reply = m.address_reply(q, (ip("192.0.2.1"), ip("2001:db8::1"), ip("192.0.2.2")), 300)
    header = struct.pack(">HHHHHH", q.id, 0x8180, 1, 2, 0, 1)
    record = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 300, 4)
    opt = b"\x00" + struct.pack(">HHIH", 41, 1350, 0, 0)
    assert (
        reply
        == header
        + q.question
        + record
        + bytes([192, 0, 2, 1])
        + record
        + bytes([192, 0, 2, 2])
        + opt
    )
    parsed = DNSRecord.parse(reply)
    assert str(parsed.q.qname) == "Www.Example.org."  # 0x20 case echoed
    assert [str(rr.rdata) for rr in parsed.rr] == ["192.0.2.1", "192.0.2.2"]


def test_aaaa_reply_and_rcodes() -> None:
    q = m.parse_query(question("v6.example", "AAAA"))
    parsed = DNSRecord.parse(m.address_reply(q, (ip("2001:db8::1"),), 60))
    assert [str(rr.rdata) for rr in parsed.rr] == ["2001:db8::1"]
    assert parsed.ar == []  # no OPT without one in the query
    nx = DNSRecord.parse(m.address_reply(q, (), 30, m.NXDOMAIN))
    assert (nx.header.rcode, nx.rr, nx.header.ra, nx.header.rd) == (RCODE.NXDOMAIN, [], 1, 1)
    fail = DNSRecord.parse(m.error_reply(q, m.SERVFAIL))
    assert fail.header.rcode == RCODE.SERVFAIL and fail.header.id == q.id


def test_fit_udp_truncates_to_the_clients_size() -> None:
    q = m.parse_query(question("big.example", "A"))
    many = tuple(ip(f"10.0.{i // 256}.{i % 256}") for i in range(40))
    reply = m.address_reply(q, many, 60)
    assert len(reply) > 512
    cut = m.fit_udp(q, reply)
    parsed = DNSRecord.parse(cut)
    assert parsed.header.tc == 1 and parsed.rr == [] and str(parsed.q.qname) == "big.example."
    q_edns = m.parse_query(question("big.example", "A", edns=4096))
    assert m.fit_udp(q_edns, m.address_reply(q_edns, many, 60)) == m.address_reply(q_edns, many, 60)


@pytest.mark.parametrize(
    ("name", "ok"),
    [("example.org", True), ("_sip._tcp.example.org", True), ("localhost", True),
     ("", False), ("a..b", False), ("a b.org", False), ("ex*.org", False), ("a" * 64, False)],
)  # fmt: skip
def test_address_names(name: str, ok: bool) -> None:
    assert m.is_address_name(name) is ok
