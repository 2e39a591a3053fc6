"""Group outbounds on trio's fake clock with fake members (probes are the fake members'
scripted delays), plus the real probe over loopback HTTP through direct.

What is checked: the member a flow gets and its chain; the background probers (spread
start, every interval, a change within interval + timeout, one log line with the
delays); all-down failing at once with one warning; selector choices persisted and
read back (a restart); a rebuilt runtime keeping history and choices (a reload).
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import socket
from pathlib import Path

import pytest
import trio
import trio.testing

from trio_tproxy.config import DirectOutbound as DirectConfig
from trio_tproxy.config import parse_config_text
from trio_tproxy.dial import DialError
from trio_tproxy.outbound import DirectOutbound, GroupOutbound, GroupState, build_outbounds
from trio_tproxy.outbound.base import Destination, SocketUpstream, UdpRequest
from trio_tproxy.outbound.health import HealthBook, probe_delay
from trio_tproxy.outbound.selections import FILE_NAME, SelectionStore, state_dir
from trio_tproxy.runtime import Runtime

from .fakes import FakeResolver

BASE = """
[[inbounds]]
tag = "in"
type = "tproxy"
port = 12345
[[outbounds]]
tag = "direct"
type = "direct"
"""
DST = Destination((ipaddress.IPv4Address("192.0.2.7"), 443))


class FakeMember:
    """A member whose probe takes ``delay`` ms (fails when ``up`` is false) and whose
    flows are socketpairs."""

    def __init__(self, tag: str, delay: int) -> None:
        self.tag, self.delay, self.up = tag, delay, True
        self.opened = 0
        self.probed_at: list[float] = []
        self.sockets: list[socket.socket] = []

    async def open_stream(
        self,
        destination: Destination,
        *,
        timeout: float,  # noqa: ASYNC109
        initial: bytes = b"",
    ) -> SocketUpstream:
        await trio.lowlevel.checkpoint()
        if not self.up:
            raise DialError(errno.ECONNREFUSED, f"{self.tag}: down")
        self.opened += 1
        ours, theirs = socket.socketpair()
        self.sockets += [ours, theirs]
        return SocketUpstream(ours, chain=(self.tag,))

    async def open_udp(self, request: UdpRequest) -> str:
        await trio.lowlevel.checkpoint()
        return f"link via {self.tag}"

    async def probe(self, timeout: float) -> int:  # noqa: ASYNC109
        self.probed_at.append(trio.current_time())
        await trio.sleep(self.delay / 1000)  # the group bounds it by its timeout
        if not self.up:
            raise DialError(errno.ECONNREFUSED, "down")
        return self.delay

    def close(self) -> None:
        for s in self.sockets:
            s.close()


async def fake_probe(outbound: object, url: str, timeout: float) -> int:  # noqa: ASYNC109
    assert isinstance(outbound, FakeMember | GroupOutbound)
    if isinstance(outbound, GroupOutbound):  # a group probes through its current member
        member = outbound.outbounds[outbound.current()]
        assert isinstance(member, FakeMember)
        return await member.probe(timeout)
    return await outbound.probe(timeout)


def make_group(kind: str, members: list[FakeMember], *, state: GroupState | None = None,
               tag: str = "auto", extra: str = "", outbounds: dict[str, object] | None = None,
               ) -> GroupOutbound:  # fmt: skip
    cfg = parse_config_text(BASE + "".join(
        f'[[outbounds]]\ntag = "{m.tag}"\ntype = "socks"\nserver = "192.0.2.1:1080"\n'
        for m in members
    ) + f'[[outbounds]]\ntag = "{tag}"\ntype = "{kind}"\n'
        f'outbounds = {json.dumps([m.tag for m in members])}\n'
        f'interval = "10s"\ntimeout = "1s"\n{extra}')  # fmt: skip
    table: dict[str, object] = outbounds if outbounds is not None else {}
    table.update({m.tag: m for m in members})
    group_cfg = cfg.outbound(tag)
    group = GroupOutbound(group_cfg, table, state or GroupState(selections=SelectionStore(None)),
                          probe=fake_probe)  # type: ignore[arg-type]  # fmt: skip
    table[tag] = group
    return group


async def test_a_flow_gets_the_chosen_member_and_the_chain_names_both() -> None:
    fast, slow = FakeMember("fast", 20), FakeMember("slow", 300)
    group = make_group("urltest", [slow, fast])
    assert await group.probe_all() == {"slow": 300, "fast": 20}
    upstream = await group.open_stream(DST, timeout=1.0)
    assert isinstance(upstream, SocketUpstream)
    assert upstream.chain == ("fast", "auto")
    assert (fast.opened, slow.opened) == (1, 0)
    assert await group.open_udp(UdpRequest(("10.0.0.2", 5000), ("192.0.2.7", 53),
                                           bytearray(10), 1.0)) == "link via fast"  # fmt: skip
    fast.close()


async def test_groups_of_groups_chain_outbound_first() -> None:
    hk, us = FakeMember("hk", 50), FakeMember("us", 80)
    table: dict[str, object] = {}
    state = GroupState(selections=SelectionStore(None))
    make_group("fallback", [hk, us], tag="inner", state=state, outbounds=table)
    outer_cfg = parse_config_text(
        BASE + '[[outbounds]]\ntag = "inner"\ntype = "fallback"\noutbounds = ["direct"]\n'
        '[[outbounds]]\ntag = "outer"\ntype = "selector"\noutbounds = ["direct", "inner"]\n'
    ).outbound("outer")
    outer = GroupOutbound(outer_cfg, table, state)  # type: ignore[arg-type]
    outer.select("inner")
    upstream = await outer.open_stream(DST, timeout=1.0)
    assert upstream.chain == ("hk", "inner", "outer")
    hk.close()


async def test_prober_moves_urltest_within_interval_plus_timeout(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trio_tproxy.outbound.group")
    fast, slow = FakeMember("fast", 40), FakeMember("slow", 200)
    group = make_group("urltest", [slow, fast], extra='tolerance = "50ms"')
    async with trio.open_nursery() as nursery:
        nursery.start_soon(group.run_prober)
        await trio.sleep(1.5)  # one round: at most the timeout
        assert group.current() == "fast"
        fast.delay = 600  # slowed: the next round (interval later) notices
        changed_at = trio.current_time()
        for _ in range(200):
            if group.current() != "fast":
                break
            await trio.sleep(0.1)
        assert trio.current_time() - changed_at <= 10 + 1 + 0.2
        assert group.current() == "slow"
        fast.delay, fast.up = 40, False  # killed: slow stays, fast failed
        await trio.sleep(11.5)
        assert group.current() == "slow"
        assert group.state.health.last_delay("fast") == 0
        nursery.cancel_scope.cancel()
    changes = [r.getMessage() for r in caplog.records if "now uses" in r.getMessage()]
    assert changes == ["group 'auto' (urltest) now uses 'slow' instead of 'fast' "
                       "(slow 200ms, fast 600ms)"]  # fmt: skip
    # every member is probed every round, also the one no flow uses
    assert len(slow.probed_at) == len(fast.probed_at) >= 3


async def test_probe_timeout_counts_as_failed(autojump_clock: trio.testing.MockClock) -> None:
    hung, ok = FakeMember("hung", 5000), FakeMember("ok", 100)  # timeout is 1s
    group = make_group("fallback", [hung, ok])
    started = trio.current_time()
    assert await group.probe_all() == {"hung": 0, "ok": 100}
    assert trio.current_time() - started < 1.2
    assert group.current() == "ok"


async def test_probe_rounds_are_spread(autojump_clock: trio.testing.MockClock) -> None:
    members = [FakeMember(f"m{i}", 10) for i in range(4)]
    table: dict[str, object] = {}
    state = GroupState(selections=SelectionStore(None))
    a = make_group("urltest", members[:2], tag="a", state=state, outbounds=table)
    b = make_group("fallback", members[2:], tag="b", state=state, outbounds=table)
    from trio_tproxy.outbound.group import probe_groups

    with trio.move_on_after(0.9):
        await probe_groups({"a": a, "b": b, **{m.tag: m for m in members}})  # type: ignore[dict-item]
    starts = sorted(t for m in members for t in m.probed_at)
    assert len(starts) == 4 and len(set(starts)) == 4  # one round, nobody at the same instant
    assert starts[-1] - starts[0] >= 0.5  # the second group starts half a spread later


async def test_all_down_fails_at_once_and_says_so_once(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "trio_tproxy.outbound.group")
    a, b = FakeMember("a", 10), FakeMember("b", 20)
    group = make_group("fallback", [a, b])
    a.up = b.up = False
    await group.probe_all()
    for _ in range(3):
        started = trio.current_time()
        with pytest.raises(DialError, match="group 'auto': no healthy member"):
            await group.open_stream(DST, timeout=5.0)
        assert trio.current_time() == started  # no dial, no wait
    assert (a.opened, b.opened) == (0, 0)
    assert group.current() == "a"  # what it would use again first
    warnings = [r.getMessage() for r in caplog.records if "no healthy member" in r.getMessage()]
    assert warnings == ["group 'auto' (fallback) has no healthy member (a failed, b failed): "
                        "its flows fail until one recovers"]  # fmt: skip
    b.up = True
    await group.probe_all()
    assert (await group.open_stream(DST, timeout=5.0)).chain == ("b", "auto")
    assert any("'b' is healthy again" in r.getMessage() for r in caplog.records)
    b.close()


def test_selector_choice_is_persisted_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "state" / FILE_NAME
    a, b = FakeMember("a", 10), FakeMember("b", 20)
    group = make_group("selector", [a, b], state=GroupState(selections=SelectionStore(path)))
    assert group.current() == "a"
    group.select("b")
    assert group.current() == "b"
    assert json.loads(path.read_text()) == {"auto": "b"}
    assert [p.name for p in path.parent.iterdir()] == [FILE_NAME]  # no temp file left
    with pytest.raises(ValueError, match="'c' is not a member of group 'auto'"):
        group.select("c")
    # a restart: a fresh state reading the same file
    again = make_group("selector", [a, b], state=GroupState(selections=SelectionStore.load(path)))
    assert again.current() == "b"
    urltest = make_group("urltest", [a, b], tag="u")
    with pytest.raises(ValueError, match="is a urltest"):
        urltest.select("b")


def test_selections_file_that_is_garbage_counts_as_empty(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / FILE_NAME
    path.write_text("{not json")
    assert SelectionStore.load(path).get("auto") is None
    assert "not read" in caplog.text
    path.write_text('["a"]')
    assert SelectionStore(path).get("auto") is None


def test_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path}/one:{tmp_path}/two")
    assert state_dir() == tmp_path / "one"
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setattr("trio_tproxy.outbound.selections.SYSTEM_STATE_DIR", tmp_path / "none")
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert state_dir() == tmp_path / ".local" / "state" / "trio-tproxy"


def test_a_rebuilt_runtime_keeps_history_and_choices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))
    text = BASE + ('[[outbounds]]\ntag = "pick"\ntype = "selector"\noutbounds = ["direct", "b"]\n'
                   '[[outbounds]]\ntag = "b"\ntype = "block"\n')  # fmt: skip
    first = Runtime.build(parse_config_text(text))
    pick = first.outbounds["pick"]
    assert isinstance(pick, GroupOutbound)
    pick.select("b")
    first.health.record("direct", 42)
    reloaded = Runtime.build(parse_config_text(text + "# changed\n"), groups=first.groups)
    again = reloaded.outbounds["pick"]
    assert isinstance(again, GroupOutbound) and again is not pick
    assert again.current() == "b" and reloaded.health.last_delay("direct") == 42
    restarted = Runtime.build(parse_config_text(text))
    assert restarted.health.last_delay("direct") is None
    restarted_pick = restarted.outbounds["pick"]
    assert isinstance(restarted_pick, GroupOutbound) and restarted_pick.current() == "b"


def test_groups_are_built_and_not_reported_unimplemented() -> None:
    from trio_tproxy.runtime import not_yet_in_effect

    cfg = parse_config_text(BASE + '[[outbounds]]\ntag = "g"\ntype = "fallback"\n'
                            'outbounds = ["direct"]\n')  # fmt: skip
    outbounds = build_outbounds(cfg, groups=GroupState(selections=SelectionStore(None)))
    group = outbounds["g"]
    assert isinstance(group, GroupOutbound)
    assert (group.kind, group.members, group.url, group.timeout) == (
        "fallback", ("direct",), "http://cp.cloudflare.com/generate_204", 5.0)  # fmt: skip
    assert not_yet_in_effect(cfg) == []


# -- the real probe: HTTP over loopback through direct ----------------------------------


async def serve_http(listener: trio.SocketListener, answer: bytes | None) -> None:
    """Answer every request with ``answer`` (None: never answer)."""

    async def one(stream: trio.SocketStream) -> None:
        async with stream:
            request = b""
            while b"\r\n\r\n" not in request:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    return
                request += chunk
            assert request.startswith(b"GET /generate_204 HTTP/1.1\r\nHost: ")
            if answer is None:
                await trio.sleep_forever()
            await stream.send_all(answer)

    await trio.serve_listeners(one, [listener])


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (b"HTTP/1.1 204 No Content\r\n\r\n", None),
        (b"HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 0\r\n\r\n", None),
        (b"HTTP/1.1 503 Unavailable\r\n\r\n", "probe answered HTTP 503"),
        (b"SSH-2.0-OpenSSH\r\n", "probe answer is not HTTP"),
        (b"", "closed before an answer"),
        (None, "no answer within 0.3s"),
    ],
)
async def test_probe_delay_over_direct(answer: bytes | None, outcome: str | None) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    direct = DirectOutbound(DirectConfig(tag="direct"))
    book = HealthBook()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_http, listeners[0], answer)
        url = f"http://127.0.0.1:{port}/generate_204"
        if outcome is None:
            delay = await probe_delay(direct, url, 0.3)
            assert 1 <= delay < 300
            book.record("direct", delay)
        else:
            with pytest.raises((OSError, TimeoutError), match=outcome):
                await probe_delay(direct, url, 0.3)
        nursery.cancel_scope.cancel()


async def test_probe_by_name_through_direct_and_through_a_group() -> None:
    """direct needs the probe host's address (looked up through the runtime's resolver),
    also when it is reached through a group; the real probe is what probe_all uses."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    resolver = FakeResolver({"probe.test": [ipaddress.IPv4Address("127.0.0.1")]})
    direct = DirectOutbound(DirectConfig(tag="direct"), resolver)
    cfg = parse_config_text(BASE + '[[outbounds]]\ntag = "g"\ntype = "fallback"\n'
                            f'outbounds = ["direct"]\nurl = "http://probe.test:{port}/generate_204"\n')  # fmt: skip
    table: dict[str, object] = {"direct": direct}
    group = table["g"] = GroupOutbound(
        cfg.outbound("g"),
        table,
        GroupState(selections=SelectionStore(None)),
        resolver,  # type: ignore[arg-type]
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_http, listeners[0], b"HTTP/1.1 204 No Content\r\n\r\n")
        url = f"http://probe.test:{port}/generate_204"
        assert await probe_delay(direct, url, 1.0, resolver=resolver) >= 1
        assert await probe_delay(group, url, 1.0, resolver=resolver) >= 1
        assert (await group.probe_all())["direct"] >= 1
        assert group.state.health.alive("direct")
        nursery.cancel_scope.cancel()
    assert resolver.asked == ["probe.test"] * 3


async def test_probe_through_a_refusing_member_is_an_oserror() -> None:
    with pytest.raises(OSError):
        await probe_delay(_Down(), "http://192.0.2.1/", 1.0)


class _Down:
    tag = "down"

    async def open_stream(self, destination: Destination, *, timeout: float,  # noqa: ASYNC109
                          initial: bytes = b"") -> SocketUpstream:  # fmt: skip
        await trio.lowlevel.checkpoint()
        raise DialError(errno.ECONNREFUSED, "refused")


async def test_probe_over_https(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An https:// probe URL: TLS through the member's stream, the name verified."""
    import ssl

    from netlab.servers import make_certificate

    cert = make_certificate(tmp_path, ("probe.test",))
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert.path, cert.key)
    trusting = ssl.create_default_context(cafile=str(cert.path))
    monkeypatch.setattr("trio_tproxy.outbound.health.ssl.create_default_context", lambda: trusting)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    tls_listener = trio.SSLListener(listeners[0], server_ctx)
    resolver = FakeResolver({"probe.test": [ipaddress.IPv4Address("127.0.0.1")]})
    direct = DirectOutbound(DirectConfig(tag="direct"), resolver)

    async def one(stream: trio.SSLStream[trio.SocketStream]) -> None:
        request = b""
        with trio.move_on_after(5), contextlib.suppress(trio.BrokenResourceError):
            while b"\r\n\r\n" not in request:  # the bad case breaks in the handshake
                request += await stream.receive_some(4096)
            await stream.send_all(b"HTTP/1.1 204 No Content\r\n\r\n")
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, one, [tls_listener])
        url = f"https://probe.test:{port}/generate_204"
        assert await probe_delay(direct, url, 2.0, resolver=resolver) >= 1
        bad = f"https://127.0.0.1:{port}/generate_204"  # the certificate does not name it
        with pytest.raises(OSError, match="probe connection broke"):
            await probe_delay(direct, bad, 2.0, resolver=resolver)
        nursery.cancel_scope.cancel()


async def test_a_member_of_several_groups_is_probed_once_per_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    shared, a_only, b_only = FakeMember("hk", 30), FakeMember("us", 60), FakeMember("jp", 90)
    table: dict[str, object] = {}
    state = GroupState(selections=SelectionStore(None))
    a = make_group("urltest", [shared, a_only], tag="a", state=state, outbounds=table)
    b = make_group("fallback", [shared, b_only], tag="b", state=state, outbounds=table)
    from trio_tproxy.outbound.group import probe_groups

    with trio.move_on_after(35):  # interval 10 s: rounds at ~0, 10, 20, 30
        await probe_groups({"a": a, "b": b, **{m.tag: m for m in (shared, a_only, b_only)}})  # type: ignore[dict-item]
    assert len(a_only.probed_at) == len(b_only.probed_at) == 4
    assert len(shared.probed_at) == 4  # not 8: the second group reused the first's
    assert a.current() == "hk" and b.current() == "hk"
    # an explicit probe (the API's delay test) always probes
    assert (await b.probe_all())["hk"] == 30
    assert len(shared.probed_at) == 5
