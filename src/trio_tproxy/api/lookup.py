"""/dns/query: one question through the gateway's own DNS splitter, in mihomo's shape.

The query goes through ``DnsService.answer`` exactly as a LAN client's would (hosts,
cache, the server the splitter picks), so the answer is what clients get.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import trio
from dnslib import QTYPE, RR, DNSError, DNSRecord

from ..runtime import Runtime
from .http import Reply, json_reply, message

# mihomo's resolver.DefaultDNSTimeout
QUERY_TIMEOUT = 5.0
MAX_NAME = 253


async def dns_query(rt: Runtime, query: Mapping[str, str]) -> Reply:
    name = query.get("name", "").strip()
    qtype_text = (query.get("type") or "A").upper()
    try:
        qtype = getattr(QTYPE, qtype_text)
    except (DNSError, AttributeError):
        qtype = None
    if not isinstance(qtype, int):
        return message(400, "invalid query type")
    if not name or len(name) > MAX_NAME:
        return message(400, "invalid name")
    try:
        question = DNSRecord.question(name, qtype_text)
        question.header.id = secrets.randbits(16)
        data = question.pack()
    except (DNSError, ValueError, UnicodeError):
        return message(400, "invalid name")
    with trio.move_on_after(QUERY_TIMEOUT):
        reply = await rt.dns.answer(data, udp=False)
        if reply is None:
            return message(500, "no answer")
        try:
            return json_reply(_shape(DNSRecord.parse(reply)))
        except DNSError as exc:
            return message(500, f"bad answer: {exc}")
    return message(500, "timeout")


def _shape(record: DNSRecord) -> dict[str, Any]:
    header = record.header
    shown: dict[str, Any] = {
        "Status": header.rcode, "TC": bool(header.tc), "RD": bool(header.rd),
        "RA": bool(header.ra), "AD": bool(header.ad), "CD": bool(header.cd),
        "Question": [{"Name": str(q.qname), "Qtype": q.qtype, "Qclass": q.qclass}
                     for q in record.questions],
    }  # fmt: skip
    additional = [r for r in record.ar if r.rtype != QTYPE.OPT]
    for key, section in (("Answer", record.rr), ("Authority", record.auth),
                         ("Additional", additional)):  # fmt: skip
        if section:
            shown[key] = [_rr(rr) for rr in section]
    return shown


def _rr(rr: RR) -> dict[str, Any]:
    return {"name": str(rr.rname), "type": rr.rtype, "TTL": rr.ttl, "data": str(rr.rdata)}
