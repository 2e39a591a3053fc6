"""The session table without a kernel: routing per flow, full cone, queues, timers, limits."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio
import trio.testing
from dnslib import DNSRecord

from trio_tproxy.dial import DialError
from trio_tproxy.udp import flow as udp_flow
from trio_tproxy.udp import session as udp_session

from .conftest import CLIENT, SERVER, Harness, Lines

OTHER: tuple[str, int] = ("10.77.3.1", 7777)
QUIC = Path(__file__).parents[1] / "sniff" / "fixtures"


async def test_flows_of_one_client_share_one_link(make_service) -> None:  # type: ignore[no-untyped-def]
    h: Harness = await make_service()
    h.send(SERVER, b"a")
    h.send(OTHER, b"b")
    await h.settle()
    h.send(SERVER, b"c")
    (link,) = h.direct.links  # one mapping towards every remote: full cone
    assert link.request.client == CLIENT and link.request.first_dst in (SERVER, OTHER)
    # the two flows are routed concurrently: order is kept per remote, not across them
    assert sorted(link.sent[:2]) == [(b"a", SERVER, None), (b"b", OTHER, None)]
    assert link.sent[2] == (b"c", SERVER, None)
    assert (h.counters.sessions, h.counters.flows, h.counters.datagrams_up) == (1, 2, 3)


async def test_replies_come_from_the_remote_that_sent_them(make_service, logs: Lines) -> None:  # type: ignore[no-untyped-def]
    h: Harness = await make_service()
    h.send(SERVER, b"hello")
    await h.settle()
    (link,) = h.direct.links
    link.reply(b"answer", SERVER)
    link.reply(b"unsolicited", OTHER)  # a remote the client never addressed
    assert h.service.replies.sent == [(SERVER, CLIENT, b"answer"), (OTHER, CLIENT, b"unsolicited")]
    h.send(OTHER, b"back to other")  # now the client answers it: routed, same link
    await h.settle()
    assert link.sent[-1] == (b"back to other", OTHER, None)
    h.service.sessions[CLIENT].finish("stopped")
    lines = logs.matching("trio_tproxy.access")
    assert any("10.77.1.2:40000 -> 10.77.2.2:9000 udp tp -> direct (default) up=5 down=6 "
               "datagrams=1/1" in line for line in lines), lines  # fmt: skip
    assert any("-> 10.77.3.1:7777 udp tp -> direct (default) up=13 down=11 datagrams=1/1"
               in line for line in lines), lines  # fmt: skip


async def test_each_flow_is_routed(make_service, logs: Lines) -> None:  # type: ignore[no-untyped-def]
    rules = '[[routing.rules]]\nnetwork = "udp"\nport = "53"\noutbound = "block"\n'
    h: Harness = await make_service(extra=rules)
    h.send(("10.77.2.2", 53), b"query")
    h.send(SERVER, b"game")
    await h.settle()
    h.send(("10.77.2.2", 53), b"again")
    (link,) = h.direct.links
    assert link.sent == [(b"game", SERVER, None)]  # nothing for port 53 went out
    h.service.sessions[CLIENT].finish("idle timeout")
    lines = logs.matching("trio_tproxy.access")
    assert any("-> 10.77.2.2:53 udp tp -> block (rule #0) up=10 down=0 datagrams=2/0" in line
               and line.endswith("blocked") for line in lines), lines  # fmt: skip


async def test_an_outbound_without_udp_refuses_and_says_so_once(make_service, logs: Lines) -> None:  # type: ignore[no-untyped-def]
    rules = '[[routing.rules]]\nport = "3128"\noutbound = "web"\n'
    h: Harness = await make_service(extra=rules)
    for port in (40000, 40001):
        h.send(("10.77.2.2", 3128), b"x", client=("10.77.1.2", port))
    await h.settle()
    h.send(("10.77.2.2", 3128), b"y")
    warnings = logs.matching("does not carry UDP")
    assert len([w for w in warnings if w.startswith("WARNING")]) == 1, warnings
    assert "outbound 'web' (http) does not carry UDP" in warnings[0]
    assert h.counters.dropped == 1  # the datagram after the refusal; queued ones vanished with it
    h.service.sessions[CLIENT].finish("stopped")
    assert logs.matching("refused: outbound 'web' does not carry UDP")


async def test_the_gateway_itself_is_refused_and_logged_once(make_service, logs: Lines) -> None:  # type: ignore[no-untyped-def]
    h: Harness = await make_service()
    for port in range(40000, 40005):
        for _ in range(20):
            h.send(("127.0.0.1", 53), b"storm", client=("10.77.1.2", port))
    await h.settle()
    assert h.direct.links == []
    assert h.counters.refused_loop == 5 and h.counters.dropped == 5 * 20
    assert len(logs.matching("is an address of this gateway")) == 1


async def test_sessions_expire_when_idle_and_replies_keep_them_alive(
    make_service, autojump_clock: trio.testing.MockClock, logs: Lines
) -> None:  # type: ignore[no-untyped-def]
    h: Harness = await make_service(policy='udp_idle = "10s"')
    start = trio.current_time()
    h.send()
    await h.settle()
    (link,) = h.direct.links
    await trio.sleep(8)
    link.reply(b"still here", SERVER)  # activity from the remote side counts
    await trio.sleep(8)
    assert CLIENT in h.service.sessions
    await trio.sleep(3)
    assert CLIENT not in h.service.sessions
    assert link.closed and h.counters.expired == 1
    (line,) = logs.matching("trio_tproxy.access")
    assert line.endswith("idle timeout")
    assert f"{18.0:.3f}s" in line  # 8 s + 10 s idle after the reply
    del start


async def test_a_full_table_evicts_the_least_recently_active(make_service, logs: Lines) -> None:  # type: ignore[no-untyped-def]
    h: Harness = await make_service(policy="max_udp_sessions = 2")
    a, b, c = ("10.77.1.2", 1), ("10.77.1.2", 2), ("10.77.1.3", 3)
    h.send(client=a)
    h.send(client=b)
    await h.settle()
    h.send(client=a)  # a is now more recent than b
    h.send(client=c)
    await h.settle()
    assert list(h.service.sessions) == [a, c]
    closed = {link.request.client: link.closed for link in h.direct.links}
    assert closed == {a: False, b: True, c: False}
    assert h.counters.evicted == 1
    assert logs.matching("10.77.1.2:2 -> 10.77.2.2:9000")[0].endswith("evicted (session limit)")
    assert len(logs.matching("session limit reached")) == 1


async def test_datagrams_wait_for_the_link_in_a_bounded_queue(make_service, logs: Lines) -> None:  # type: ignore[no-untyped-def]
    h: Harness = await make_service()
    h.direct.gate = trio.Event()
    for i in range(40):  # before any task ran: all wait in the flow's setup queue
        h.send(payload=b"%d" % i)
    await h.settle()  # routed; the link is still opening: they move to its queue
    h.send(payload=b"late")
    h.direct.gate.set()
    await h.settle()
    (link,) = h.direct.links
    limit = udp_flow.MAX_PENDING_DATAGRAMS
    assert [p for p, _, _ in link.sent] == [b"%d" % i for i in range(limit)]
    h.send(payload=b"after")
    assert link.sent[-1][0] == b"after"
    h.service.sessions[CLIENT].finish("stopped")
    (line,) = logs.matching("trio_tproxy.access")
    assert line.endswith(f"stopped; {40 - limit + 1} dropped (queue full while the link opens)")


async def test_a_failed_link_is_retried_after_a_pause(
    make_service, autojump_clock: trio.testing.MockClock
) -> None:  # type: ignore[no-untyped-def]
    h: Harness = await make_service()
    h.direct.failures.append(DialError(errno.ENETUNREACH, "cannot reach 10.77.2.2:9000"))
    h.send(payload=b"1")
    await h.settle()
    h.send(payload=b"2")  # dropped: the link failed a moment ago
    await h.settle()
    assert h.direct.links == [] and h.counters.dropped == 2
    await trio.sleep(udp_flow.LINK_RETRY)
    h.send(payload=b"3")
    await h.settle()
    (link,) = h.direct.links
    assert link.sent == [(b"3", SERVER, None)]


async def test_dns_is_sniffed_and_routed_by_protocol(make_service, logs: Lines) -> None:  # type: ignore[no-untyped-def]
    sniffing = "[inbounds.sniffing]\nenabled = true"
    rules = '[[routing.rules]]\nprotocol = ["dns"]\noutbound = "block"\n'
    h: Harness = await make_service(sniffing=sniffing, extra=rules)
    h.send(("10.77.2.2", 5353), DNSRecord.question("example.test").pack())
    h.send(SERVER, b"not dns")
    await h.settle()
    assert [sent[0] for sent in h.direct.links[0].sent] == [b"not dns"]
    h.service.sessions[CLIENT].finish("stopped")
    assert any("-> 10.77.2.2:5353 [example.test] udp/dns tp -> block (rule #0)" in line
               for line in logs.matching("trio_tproxy.access"))  # fmt: skip


async def test_quic_split_over_datagrams_is_sniffed_from_both(make_service, logs: Lines) -> None:  # type: ignore[no-untyped-def]
    sniffing = '[inbounds.sniffing]\nenabled = true\ndest_override = ["quic"]'
    rules = '[[routing.rules]]\ndomain = ["full:example.test"]\noutbound = "block"\n'
    h: Harness = await make_service(sniffing=sniffing, extra=rules)
    first, second = ((QUIC / f"quic_chrome-{i}.bin").read_bytes() for i in range(2))
    h.send(("10.77.2.2", 443), first)
    await h.settle()  # NEED_MORE: the flow waits for the next datagram
    assert h.direct.links == [] and h.service.sessions[CLIENT].flows[("10.77.2.2", 443)].pending
    h.send(("10.77.2.2", 443), second)
    await h.settle()
    h.service.sessions[CLIENT].finish("stopped")
    assert any("[example.test] udp/quic tp -> block (rule #0)" in line
               for line in logs.matching("trio_tproxy.access"))  # fmt: skip


async def test_sniffing_gives_up_at_its_timeout(
    make_service, autojump_clock: trio.testing.MockClock
) -> None:  # type: ignore[no-untyped-def]
    h: Harness = await make_service(
        sniffing='[inbounds.sniffing]\nenabled = true\ntimeout = "300ms"'
    )
    start = trio.current_time()
    h.send(("10.77.2.2", 443), (QUIC / "quic_chrome-0.bin").read_bytes())
    await h.settle()
    assert h.direct.links == []
    await trio.sleep(0.31)
    (link,) = h.direct.links  # routed by address after 300 ms, datagram kept
    assert len(link.sent) == 1 and trio.current_time() - start < 0.5


async def test_empty_datagrams_are_relayed_and_strays_dropped(make_service) -> None:  # type: ignore[no-untyped-def]
    h: Harness = await make_service()
    h.send(payload=b"")
    await h.settle()
    assert h.direct.links[0].sent == [(b"", SERVER, None)]
    h.service.on_datagram(memoryview(b"x"), CLIENT, None, False)  # no original destination
    h.service.on_datagram(memoryview(b"x"), CLIENT, SERVER, True)  # truncated
    assert (h.counters.empty, h.counters.dropped) == (1, 2)


async def test_a_bug_on_the_datagram_path_stays_with_that_session(
    make_service, logs: Lines
) -> None:  # type: ignore[no-untyped-def]
    h: Harness = await make_service()
    h.send()
    h.send(client=("10.77.1.9", 1))
    await h.settle()
    links = {link.request.client: link for link in h.direct.links}
    links[CLIENT].explode = True
    for _ in range(100):
        h.send()
    h.send(payload=b"fine", client=("10.77.1.9", 1))
    assert links[("10.77.1.9", 1)].sent[-1][0] == b"fine"
    assert len(logs.matching("internal error on a datagram")) == 1  # rate-limited
    assert h.counters.dropped == 100


async def test_flows_per_session_are_bounded(
    make_service, logs: Lines, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(udp_session, "MAX_FLOWS_PER_SESSION", 3)
    h: Harness = await make_service()
    for port in range(1, 5):
        h.send(("10.77.2.2", port))
    await h.settle()
    assert list(h.service.sessions[CLIENT].flows) == [("10.77.2.2", p) for p in (2, 3, 4)]
    (line,) = logs.matching("-> 10.77.2.2:1 ")
    assert "forgotten (flow limit)" in line


async def test_drain_ends_idle_sessions_within_a_second(
    make_service, autojump_clock: trio.testing.MockClock
) -> None:  # type: ignore[no-untyped-def]
    h: Harness = await make_service(policy='udp_idle = "120s"')
    h.send()
    await h.settle()
    start = trio.current_time()
    h.service.drain()
    h.send(client=("10.77.1.5", 5))  # a new client while draining: not admitted
    await trio.sleep(0.9)
    assert CLIENT in h.service.sessions
    await trio.sleep(0.2)  # silent for DRAIN_IDLE (1 s), not udp_idle (120 s)
    assert not h.service.sessions and trio.current_time() - start < 1.2
    assert h.counters.sessions == 1
