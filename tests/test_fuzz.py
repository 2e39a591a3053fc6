"""The fuzz campaign (issue 13, proof): every parser that reads what others wrote, fed
mutations of real inputs and random bytes. The contract each target checks: a result or
the parser's own error, never another exception.

Targets: the stream and datagram sniffers (the captured fixtures), a client's DNS
message through the splitter's answer path (``answer_now``: parse, hosts, FORMERR) and an
upstream's answer (``parse_answer``, ``check_forwarded``), config loading
(``conf/main.toml`` mutated), domain-list parsing (real ``rules/`` files mutated).

The budget per target is ``FUZZ_EXAMPLES`` (default 200: a few seconds in CI);
``scripts/fuzz`` runs the same campaign longer and prints how many inputs each target ran.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trio_tproxy.config import ConfigErrors, parse_config_text
from trio_tproxy.dns.exchange import build_query, check_forwarded, parse_answer
from trio_tproxy.dns.message import QTYPE_A, BadMessage, parse_query
from trio_tproxy.dns.service import DnsService
from trio_tproxy.geo import GeoData
from trio_tproxy.geo.dlc import GeositeError, parse_geosite_text
from trio_tproxy.outbound import build_outbounds
from trio_tproxy.route import compile_router
from trio_tproxy.sniff import NEED_MORE, NOT_THIS, Sniffed, sniff_datagrams, sniff_stream

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "sniff" / "fixtures"
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
CAMPAIGN = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
RAN: Counter[str] = Counter()  # inputs run per target, printed at the end

STREAMS = [p.read_bytes() for p in sorted(FIXTURES.glob("*.bin"))
           if p.name.startswith(("tls_", "http_", "bittorrent_"))]  # fmt: skip
DATAGRAMS = [p.read_bytes() for p in sorted(FIXTURES.glob("*.bin"))
             if p.name.startswith(("quic_", "dns_", "dht_", "utp_"))]  # fmt: skip
CONFIG = (ROOT / "conf" / "main.toml").read_text()
LISTS = {name: (ROOT / "rules" / name).read_text()
         for name in ("cn", "google", "category-ads-all", "apple", "microsoft")}  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    for target, count in sorted(RAN.items()):
        print(f"fuzz {target}: {count} inputs run")


@st.composite
def mutated_bytes(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed with bytes flipped, set, inserted, deleted or cut off."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data)))
        operation = draw(st.sampled_from(("flip", "set", "insert", "delete", "cut")))
        if operation == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif at == len(data):
            continue
        elif operation == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set":
            data[at] = draw(st.sampled_from((0x00, 0x01, 0x3F, 0x7F, 0x80, 0xC0, 0xFF)))
        elif operation == "delete":
            del data[at : at + draw(st.integers(1, 32))]
        else:
            del data[at:]
    return bytes(data)


@st.composite
def mutated_text(draw: st.DrawFn, seeds: list[str]) -> str:
    """A seed with lines deleted, duplicated or swapped and characters changed."""
    lines = draw(st.sampled_from(seeds)).splitlines()
    for _ in range(draw(st.integers(1, 6))):
        if not lines:
            break
        i = draw(st.integers(0, len(lines) - 1))
        operation = draw(st.sampled_from(("delete", "duplicate", "swap", "edit", "insert")))
        if operation == "delete":
            del lines[i]
        elif operation == "duplicate":
            lines.insert(i, lines[i])
        elif operation == "swap":
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        elif operation == "edit" and lines[i]:
            at = draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:at] + draw(st.text(max_size=4)) + lines[i][at + 1 :]
        else:
            lines.insert(i, draw(st.text(max_size=40)))
    return "\n".join(lines) + "\n"


# -- sniffers ------------------------------------------------------------------------------


@CAMPAIGN
@given(st.one_of(mutated_bytes(STREAMS), st.binary(max_size=2000)))
def test_fuzz_stream_sniffers(data: bytes) -> None:
    RAN["sniff_stream"] += 1
    outcome = sniff_stream(data)
    assert outcome is NEED_MORE or outcome is NOT_THIS or isinstance(outcome, Sniffed)


@CAMPAIGN
@given(st.lists(st.one_of(mutated_bytes(DATAGRAMS), st.binary(max_size=1500)), max_size=4))
def test_fuzz_datagram_sniffers(datagrams: list[bytes]) -> None:
    RAN["sniff_datagrams"] += 1
    outcome = sniff_datagrams(datagrams)
    assert outcome is NEED_MORE or outcome is NOT_THIS or isinstance(outcome, Sniffed)


# -- DNS -------------------------------------------------------------------------------------

DNS_CONFIG = """
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = 12345
[[outbounds]]
tag = "direct"
type = "direct"
[dns.hosts]
"www.example.com" = ["192.0.2.1", "2001:db8::1"]
"alias.example" = "www.example.com"
"""
QUERIES = [
    (FIXTURES / "dns_dig.bin").read_bytes(),
    build_query("www.example.com", QTYPE_A, 7),
    build_query("alias.example", 28, 8),
    build_query("txt.example", 16, 9),
]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> DnsService:
    rules = tmp_path_factory.mktemp("rules")
    cfg = parse_config_text(DNS_CONFIG + f'[geodata]\nrules_dir = "{rules}"\n')
    geo = GeoData.load(cfg.geodata)
    return DnsService(cfg, geo, compile_router(cfg, geo), build_outbounds(cfg))


@CAMPAIGN
@given(data=st.one_of(mutated_bytes(QUERIES), st.binary(max_size=600)), udp=st.booleans())
def test_fuzz_client_dns_messages(service: DnsService, data: bytes, udp: bool) -> None:
    RAN["dns client message"] += 1

    async def answer() -> bytes | None:
        return service.answer_now(data, udp=udp)

    reply = trio.run(answer)
    assert reply is None or (len(reply) >= 12 and reply[:2] == data[:2])


def _answers() -> list[bytes]:
    from dnslib import RR, A, DNSRecord

    record = DNSRecord.parse(build_query("www.example.com", QTYPE_A, 7))
    reply = record.reply()
    for i in range(3):
        reply.add_answer(RR("www.example.com", rdata=A(f"192.0.2.{i + 1}"), ttl=300))
    return [reply.pack()]


@CAMPAIGN
@given(st.one_of(mutated_bytes(_answers()), st.binary(max_size=600)))
def test_fuzz_upstream_answers(data: bytes) -> None:
    RAN["dns upstream answer"] += 1
    with contextlib.suppress(BadMessage):  # the parser's own error: "not an answer"
        parse_answer(data, 7, "www.example.com", QTYPE_A)
    with contextlib.suppress(BadMessage):
        check_forwarded(data, 7, parse_query(QUERIES[1]))


# -- config and domain lists ---------------------------------------------------------------


@CAMPAIGN
@given(mutated_text([CONFIG]))
def test_fuzz_config_loading(text: str) -> None:
    RAN["config"] += 1
    try:
        parse_config_text(text)
    except ConfigErrors as exc:
        assert exc.errors
        assert all("\n" not in str(error) for error in exc.errors), exc.errors


@CAMPAIGN
@given(name=st.sampled_from(sorted(LISTS)), data=st.data())
def test_fuzz_domain_lists(name: str, data: st.DataObject) -> None:
    RAN["domain list"] += 1
    text = data.draw(mutated_text([LISTS[name]]))
    try:
        parse_geosite_text(text, name, f"rules/{name}")
    except GeositeError as exc:
        assert exc.args
