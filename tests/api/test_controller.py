"""The controller API in-process: a real server on loopback, fake flows and groups.

The client (apiclient.py, h11 + wsproto) runs in a thread; the server in the test's
trio loop. Group objects follow the groups/API contract (GROUPS-API-CONTRACT.md).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from tests.api import apiclient
from trio_tproxy.access import FlowRecord
from trio_tproxy.api import Controller, serve_api
from trio_tproxy.api.flows import LocalFlows
from trio_tproxy.config import parse_config_text
from trio_tproxy.route import Decision
from trio_tproxy.runtime import Runtime
from trio_tproxy.tracking import TrackedFlow

SECRET = "s3cret"
AUTH = {"authorization": f"Bearer {SECRET}"}

CONFIG = """
[[inbounds]]
tag = "tp-in"
type = "tproxy"
port = 12345
[[inbounds]]
tag = "redir-in"
type = "redirect"
port = 12346
network = ["tcp"]
[[outbounds]]
tag = "direct"
type = "direct"
[[outbounds]]
tag = "block"
type = "block"
[[outbounds]]
tag = "socks-up"
type = "socks"
server = "127.0.0.1:1080"
[[outbounds]]
tag = "pick"
type = "selector"
outbounds = ["direct", "socks-up"]
[[outbounds]]
tag = "auto"
type = "urltest"
outbounds = ["direct", "socks-up"]
[[routing.rules]]
domain = ["domain:example.com"]
outbound = "pick"
[[routing.rules]]
port = "53"
network = ["udp"]
outbound = "direct"
[[routing.rules]]
ip = ["10.9.0.0/16", "geoip:private"]
outbound = "block"
"""


@attrs.frozen
class Sample:
    time: float
    delay: int


class FakeHealth:
    """The contract's HealthBook."""

    def __init__(self) -> None:
        self.samples: dict[str, list[Sample]] = {}

    def record(self, tag: str, delay: int | None, when: float | None = None) -> None:
        self.samples.setdefault(tag, []).append(Sample(when or time.time(), delay or 0))

    def history(self, tag: str) -> list[Sample]:
        return self.samples.get(tag, [])[-10:]

    def last_delay(self, tag: str) -> int | None:
        got = self.samples.get(tag)
        return got[-1].delay if got else None

    def alive(self, tag: str) -> bool:
        last = self.last_delay(tag)
        return last is None or last > 0


class FakeGroup:
    """The contract's group outbound (selector, urltest)."""

    def __init__(self, tag: str, kind: str, members: tuple[str, ...], health: FakeHealth) -> None:
        self.tag, self.kind, self.members = tag, kind, members
        self.url, self.timeout = "http://probe.test/generate_204", 5.0
        self.chosen = members[0]
        self.health = health
        self.probe_delay = 0.0

    def current(self) -> str:
        return self.chosen

    def select(self, member: str) -> None:
        if self.kind != "selector" or member not in self.members:
            raise ValueError(f"{member!r} is not a member of {self.tag!r}")
        self.chosen = member

    async def probe_all(self) -> dict[str, int]:
        await trio.sleep(self.probe_delay)
        results = {m: 10 + i for i, m in enumerate(self.members)}
        for tag, delay in results.items():
            self.health.record(tag, delay)
        return results

    async def open_stream(self, destination: Any, **kw: Any) -> Any:
        raise OSError("not in these tests")


@attrs.define
class Counts:
    up: int = 0
    down: int = 0
    chain: tuple[str, ...] = ()


@attrs.define
class FakeGateway:
    runtime: Runtime
    udp_services: list[Any] = attrs.field(factory=list)

    def flows(self) -> LocalFlows:
        return LocalFlows(lambda: self.runtime, self.udp_services)


def make_runtime() -> tuple[Runtime, FakeHealth]:
    health = FakeHealth()
    built = Runtime.build(parse_config_text(CONFIG))
    if "health" in attrs.fields_dict(Runtime):  # the groups branch gave Runtime its book
        rt = attrs.evolve(built, health=health)
    else:  # the contract's runtime.health, on a subclass until then

        @attrs.frozen
        class RuntimeWithHealth(Runtime):
            health: Any = None

        rt = RuntimeWithHealth(**attrs.asdict(built, recurse=False), health=health)
    rt.outbounds["pick"] = FakeGroup("pick", "selector", ("direct", "socks-up"), health)  # type: ignore[assignment]
    rt.outbounds["auto"] = FakeGroup("auto", "urltest", ("direct", "socks-up"), health)  # type: ignore[assignment]
    return rt, health


def add_flow(rt: Runtime, *, network: str = "tcp", inbound: str = "tp-in", kind: str = "tproxy",
             rule: int | None = 0, outbound: str = "pick", domain: str | None = "www.example.com",
             protocol: str | None = "tls", chain: tuple[str, ...] = ("direct", "pick"),
             closed: list[str] | None = None) -> TrackedFlow:  # fmt: skip
    record = FlowRecord(
        (ipaddress.ip_address("10.0.0.2"), 40000), (ipaddress.ip_address("93.184.216.34"), 443),
        inbound, domain=domain, protocol=protocol, decision=Decision(outbound, rule),
    )  # fmt: skip
    flow: TrackedFlow

    def close() -> None:
        if closed is not None:
            closed.append(flow.id)

    flow = TrackedFlow(network, kind, record, Counts(1000, 20000, chain), close)
    return rt.tracker.add(flow)


@attrs.define
class Api:
    base: str
    controller: Controller
    rt: Runtime
    health: FakeHealth

    async def get(self, path: str, **kw: Any) -> dict[str, Any]:
        return await self.call("GET", path, **kw)

    async def call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        kw.setdefault("headers", AUTH)
        return await trio.to_thread.run_sync(
            partial(apiclient.request, method, self.base + path, **kw)
        )

    async def json(self, path: str, **kw: Any) -> Any:
        got = await self.get(path, **kw)
        assert got["status"] == 200, got
        return json.loads(got["body"])

    async def ws(self, path: str, count: int, **kw: Any) -> dict[str, Any]:
        return await trio.to_thread.run_sync(
            partial(apiclient.websocket, self.base.replace("http", "http") + path, count, **kw)
        )

    async def stream(self, path: str, count: int, **kw: Any) -> dict[str, Any]:
        kw.setdefault("headers", AUTH)
        return await trio.to_thread.run_sync(
            partial(apiclient.stream, self.base + path, count, **kw)
        )


async def start_api(nursery: trio.Nursery, secret: str = SECRET, ui_dir: Path | None = None,
                    prober: Any = None) -> Api:  # fmt: skip
    rt, health = make_runtime()
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    controller = Controller(FakeGateway(rt), secret=secret, ui_dir=ui_dir, prober=prober)
    await nursery.start(serve_api, sock, controller)
    return Api(f"http://127.0.0.1:{port}", controller, rt, health)


@pytest.fixture
async def api(nursery: trio.Nursery) -> AsyncIterator[Api]:
    yield await start_api(nursery)


# -- auth and CORS ------------------------------------------------------------------------


async def test_auth_bearer_required(api: Api) -> None:
    assert (await api.get("/version", headers={}))["status"] == 401
    wrong = await api.get("/version", headers={"authorization": "Bearer nope"})
    assert wrong["status"] == 401 and json.loads(wrong["body"]) == {"message": "Unauthorized"}
    assert (await api.get("/version", headers={"authorization": SECRET}))["status"] == 401
    assert (await api.get("/version"))["status"] == 200
    # ?token= is for WebSocket upgrades only
    assert (await api.get(f"/version?token={SECRET}", headers={}))["status"] == 401
    assert (await api.get("/metrics", headers={}))["status"] == 401


async def test_websocket_token(api: Api) -> None:
    ok = await api.ws(f"/memory?token={SECRET}", 1)
    assert ok["status"] == 101 and ok["messages"][0]["inuse"] > 0
    assert (await api.ws("/memory?token=bad", 1))["status"] == 401
    assert (await api.ws("/memory", 1))["status"] == 401
    assert (await api.ws("/memory", 1, headers=AUTH))["status"] == 101


async def test_no_secret_no_auth(nursery: trio.Nursery) -> None:
    api = await start_api(nursery, secret="")
    assert (await api.get("/version", headers={}))["status"] == 200


async def test_cors_preflight_without_auth(api: Api) -> None:
    got = await api.call("OPTIONS", "/proxies", headers={
        "origin": "http://yacd.example", "access-control-request-method": "PUT",
        "access-control-request-private-network": "true",
    })  # fmt: skip
    assert got["status"] == 204
    assert got["headers"]["access-control-allow-origin"] == "*"
    assert got["headers"]["access-control-allow-private-network"] == "true"
    assert "PUT" in got["headers"]["access-control-allow-methods"]
    assert "Authorization" in got["headers"]["access-control-allow-headers"]
    normal = await api.get("/version")
    assert normal["headers"]["access-control-allow-origin"] == "*"


# -- bad requests -------------------------------------------------------------------------


def raw_exchange(base: str, data: bytes) -> bytes:
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x02\x00garbage\r\n\r\n",
    b"GET / HTTP/1.1\r\nno colon here\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
])  # fmt: skip
async def test_bad_requests_get_4xx(
    api: Api, data: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    reply = await trio.to_thread.run_sync(raw_exchange, api.base, data)
    status = int(reply.split(b" ", 2)[1])
    assert 400 <= status < 500, reply[:200]
    assert b'"message"' in reply
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert (await api.get("/version"))["status"] == 200  # the server goes on


async def test_bad_bodies_and_paths(api: Api) -> None:
    assert (await api.get("/nope"))["status"] == 404
    assert (await api.get("/proxies/unknown"))["status"] == 404
    bad = await api.call("PATCH", "/configs", body=b"{not json")
    assert bad["status"] == 400 and json.loads(bad["body"])["message"]
    assert (await api.call("PUT", "/proxies/pick", body=b"[1]"))["status"] == 400
    assert (await api.get("/proxies/direct/delay?timeout=abc"))["status"] == 400
    assert (await api.get("/logs?level=loud"))["status"] == 400
    assert (await api.get("/dns/query?name=example.com&type=BOGUS"))["status"] == 400


# -- shapes -------------------------------------------------------------------------------


async def test_root_version_configs(api: Api) -> None:
    assert await api.json("/") == {"hello": "mihomo"}
    version = await api.json("/version")
    assert version["meta"] is True and isinstance(version["version"], str)
    cfg = await api.json("/configs")
    assert cfg["tproxy-port"] == 12345 and cfg["redir-port"] == 12346
    assert cfg["mode"] == "rule" and cfg["mode-list"] == ["rule"]
    assert cfg["tun"] == {"enable": False} and cfg["port"] == 0
    assert cfg["log-level"] in ("debug", "info", "warning", "error", "silent")


async def test_patch_log_level(api: Api) -> None:
    root = logging.getLogger("trio_tproxy")
    before = root.level
    try:
        got = await api.call("PATCH", "/configs", body=b'{"log-level": "error"}')
        assert got["status"] == 204
        assert root.level == logging.ERROR
        assert (await api.json("/configs"))["log-level"] == "error"
        assert (await api.call("PATCH", "/configs", body=b'{"log-level": "x"}'))["status"] == 400
        assert (await api.call("PATCH", "/configs", body=b'{"mode": "global"}'))["status"] == 400
        assert (await api.call("PATCH", "/configs", body=b'{"mode": "Rule"}'))["status"] == 204
    finally:
        root.setLevel(before)


async def test_proxies_shape(api: Api) -> None:
    api.health.record("direct", 42, when=1_700_000_000.5)
    proxies = (await api.json("/proxies"))["proxies"]
    assert {k: v["type"] for k, v in proxies.items()} == {
        "direct": "Direct", "block": "Reject", "socks-up": "Socks5", "pick": "Selector",
        "auto": "URLTest", "GLOBAL": "Selector",
    }  # fmt: skip
    for name, shown in proxies.items():
        assert shown["name"] == name
        assert isinstance(shown["history"], list) and isinstance(shown["udp"], bool)
        assert isinstance(shown["alive"], bool)
    assert proxies["direct"]["udp"] is True and proxies["block"]["udp"] is True
    assert proxies["direct"]["history"] == [{"time": "2023-11-14T22:13:20.500000Z", "delay": 42}]
    assert proxies["pick"]["all"] == ["direct", "socks-up"] and proxies["pick"]["now"] == "direct"
    assert proxies["GLOBAL"]["all"] == ["direct", "block", "socks-up", "pick", "auto"]
    assert proxies["GLOBAL"]["now"] == "direct"
    one = await api.json("/proxies/socks-up")
    assert one == proxies["socks-up"]
    assert (await api.json("/proxies/GLOBAL"))["type"] == "Selector"


async def test_select(api: Api) -> None:
    got = await api.call("PUT", "/proxies/pick", body=b'{"name": "socks-up"}')
    assert got["status"] == 204
    assert (await api.json("/proxies/pick"))["now"] == "socks-up"
    unknown = await api.call("PUT", "/proxies/pick", body=b'{"name": "nope"}')
    assert unknown["status"] == 400 and "nope" in json.loads(unknown["body"])["message"]
    assert (await api.call("PUT", "/proxies/auto", body=b'{"name": "direct"}'))["status"] == 400
    assert (await api.call("PUT", "/proxies/direct", body=b'{"name": "x"}'))["status"] == 400
    assert (await api.call("PUT", "/proxies/none", body=b'{"name": "x"}'))["status"] == 404


async def test_delay(nursery: trio.Nursery) -> None:
    calls: list[tuple[object, str, float]] = []

    async def prober(outbound: object, url: str, timeout: float) -> int:  # noqa: ASYNC109
        calls.append((outbound, url, timeout))
        if url.endswith("/fail"):
            raise OSError("connection refused")
        if url.endswith("/slow"):
            await trio.sleep(10)
        return 123

    api = await start_api(nursery, prober=prober)
    got = await api.json("/proxies/direct/delay?url=http%3A%2F%2Fp.test%2F204&timeout=2000")
    assert got == {"delay": 123}
    assert calls[-1][1:] == ("http://p.test/204", 2.0)
    assert calls[-1][0] is api.rt.outbounds["direct"]
    assert (await api.json("/proxies/direct"))["history"][-1]["delay"] == 123
    fail = await api.get("/proxies/direct/delay?url=http://p.test/fail&timeout=2000")
    assert fail["status"] == 503
    assert (await api.json("/proxies/direct"))["history"][-1]["delay"] == 0
    slow = await api.get("/proxies/direct/delay?url=http://p.test/slow&timeout=100")
    assert slow["status"] == 504 and json.loads(slow["body"]) == {"message": "Timeout"}
    assert (await api.get("/proxies/nope/delay?url=x&timeout=100"))["status"] == 404
    await api.json("/proxies/socks-up/delay?timeout=1000")  # no url: the default probe URL
    assert calls[-1][1] == "http://cp.cloudflare.com/generate_204"


async def test_group_delay(api: Api) -> None:
    got = await api.json("/group/auto/delay?url=http://p.test/&timeout=2000")
    assert got == {"direct": 10, "socks-up": 11}
    assert (await api.json("/proxies/socks-up"))["history"][-1]["delay"] == 11
    assert (await api.get("/group/direct/delay?timeout=100"))["status"] == 404
    groups = (await api.json("/group"))["proxies"]
    assert [g["name"] for g in groups] == ["pick", "auto"]
    assert (await api.json("/group/pick"))["type"] == "Selector"
    group = api.rt.outbounds["auto"]
    group.probe_delay = 5  # type: ignore[attr-defined]
    assert (await api.get("/group/auto/delay?timeout=100"))["status"] == 504


async def test_rules_and_providers(api: Api) -> None:
    rules = (await api.json("/rules"))["rules"]
    assert [(r["type"], r["payload"], r["proxy"]) for r in rules] == [
        ("DomainSuffix", "example.com", "pick"),
        ("AND", "((DstPort,53),(Network,udp))", "direct"),
        ("OR", "((IPCIDR,10.9.0.0/16),(GeoIP,private))", "block"),
        ("Match", "", "direct"),
    ]  # fmt: skip
    assert all(r["size"] == -1 for r in rules)
    assert await api.json("/providers/proxies") == {"providers": {}}
    assert await api.json("/providers/rules") == {"providers": {}}


async def test_connections_shape_and_delete(api: Api) -> None:
    empty = await api.json("/connections")
    assert empty["connections"] == [] and empty["uploadTotal"] == 0
    closed: list[str] = []
    tcp = add_flow(api.rt, closed=closed)
    udp = add_flow(api.rt, network="udp", rule=None, outbound="direct", domain=None,
                   protocol=None, chain=(), closed=closed)  # fmt: skip
    redir = add_flow(api.rt, kind="redirect", inbound="redir-in", rule=1, protocol=None,
                     domain="learnt.example", chain=("direct",), closed=closed)  # fmt: skip
    got = await api.json("/connections")
    assert got["uploadTotal"] == 3000 and got["downloadTotal"] == 60000
    shown = {c["id"]: c for c in got["connections"]}
    c = shown[tcp.id]
    meta = c["metadata"]
    assert meta["network"] == "tcp" and meta["type"] == "TProxy"
    assert meta["sourceIP"] == "10.0.0.2" and meta["destinationIP"] == "93.184.216.34"
    assert meta["sourcePort"] == "40000" and meta["destinationPort"] == "443"
    assert meta["host"] == "www.example.com" and meta["sniffHost"] == "www.example.com"
    assert meta["inboundName"] == "tp-in" and meta["dnsMode"] == "normal"
    assert (c["upload"], c["download"]) == (1000, 20000)
    assert c["chains"] == ["direct", "pick"]
    assert (c["rule"], c["rulePayload"]) == ("DomainSuffix", "example.com")
    assert c["start"].endswith("Z") and "T" in c["start"]
    u = shown[udp.id]
    assert u["metadata"]["network"] == "udp" and u["chains"] == ["direct"]
    assert (u["rule"], u["rulePayload"]) == ("Match", "")
    r = shown[redir.id]
    assert r["metadata"]["type"] == "Redir" and r["metadata"]["dnsMode"] == "mapping"
    assert r["metadata"]["sniffHost"] == ""
    assert (r["rule"], r["rulePayload"]) == ("AND", "((DstPort,53),(Network,udp))")
    rules = (await api.json("/rules"))["rules"]
    assert {(x["type"], x["payload"]) for x in rules} >= {(c["rule"], c["rulePayload"])}

    assert (await api.call("DELETE", f"/connections/{tcp.id}"))["status"] == 204
    assert closed == [tcp.id]
    assert (await api.call("DELETE", "/connections/no-such-id"))["status"] == 204
    api.rt.tracker.remove(tcp, "closed by API")
    after = await api.json("/connections")
    assert after["uploadTotal"] == 3000  # an ended flow's bytes stay counted
    assert (await api.call("DELETE", "/connections"))["status"] == 204
    assert sorted(closed) == sorted([tcp.id, udp.id, redir.id])


async def test_connections_websocket(api: Api) -> None:
    add_flow(api.rt)
    got = await api.ws("/connections?interval=100", 2, headers=AUTH)
    assert got["status"] == 101 and len(got["messages"]) == 2
    assert got["messages"][0]["connections"][0]["metadata"]["host"] == "www.example.com"


# -- the streams --------------------------------------------------------------------------


async def test_traffic_stream(api: Api) -> None:
    counts = Counts()
    record = FlowRecord((ipaddress.ip_address("10.0.0.2"), 1), (ipaddress.ip_address("10.0.1.2"), 2),
                        "tp-in", decision=Decision("direct", None))  # fmt: skip
    api.rt.tracker.add(TrackedFlow("tcp", "tproxy", record, counts, lambda: None))

    async def grow() -> None:
        for _ in range(40):
            counts.down += 50_000
            counts.up += 1_000
            await trio.sleep(0.05)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(grow)
        got = await api.stream("/traffic", 2)
    assert got["status"] == 200 and got["headers"]["transfer-encoding"] == "chunked"
    assert all(set(line) >= {"up", "down"} for line in got["lines"])
    assert any(line["down"] > 0 for line in got["lines"])
    ws = await api.ws("/traffic", 1, headers=AUTH)
    assert set(ws["messages"][0]) >= {"up", "down"}


async def test_memory_stream(api: Api) -> None:
    got = await api.stream("/memory", 1)
    assert got["lines"][0]["inuse"] > 0 and got["lines"][0]["oslimit"] == 0


async def test_logs_stream(api: Api) -> None:
    logger = logging.getLogger("trio_tproxy.access")
    root = logging.getLogger("trio_tproxy")
    before = root.level
    root.setLevel(logging.DEBUG)

    async def speak() -> None:
        for i in range(50):
            logger.info("10.0.0.2:1 -> 10.0.1.2:2 tcp line %d", i)
            logging.getLogger("trio_tproxy.app").warning("a warning %d", i)
            await trio.sleep(0.05)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(speak)
            info = await api.stream("/logs", 2)
            warnings = await api.ws("/logs?level=warning", 2, headers=AUTH)
            nursery.cancel_scope.cancel()
    finally:
        root.setLevel(before)
    assert info["lines"][0]["type"] in ("info", "warning")
    assert any("tcp line" in line["payload"] for line in info["lines"])
    assert {m["type"] for m in warnings["messages"]} == {"warning"}


async def test_dns_query(api: Api) -> None:
    # No dns.servers: the system resolver answers; localhost is in every /etc/hosts.
    got = await api.json("/dns/query?name=localhost&type=A")
    assert set(got) >= {"Status", "Question", "TC", "RD", "RA", "AD", "CD"}
    assert got["Question"][0]["Qtype"] == 1
    if got["Status"] == 0 and "Answer" in got:
        assert got["Answer"][0]["data"] == "127.0.0.1"
        assert set(got["Answer"][0]) == {"name", "type", "TTL", "data"}


# -- /metrics and /ui/ --------------------------------------------------------------------


async def test_metrics(api: Api) -> None:
    api.health.record("direct", 33)
    flow = add_flow(api.rt)
    first = await api.get("/metrics")
    assert first["headers"]["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(first["body"])}
    for name in ("trio_tproxy_bytes", "trio_tproxy_flows", "trio_tproxy_active_flows",
                 "trio_tproxy_sniffed", "trio_tproxy_errors", "trio_tproxy_dns_queries",
                 "trio_tproxy_dns_cache", "trio_tproxy_outbound_up",
                 "trio_tproxy_outbound_delay_milliseconds", "process_resident_memory_bytes",
                 "process_open_fds"):  # fmt: skip
        assert name in families, name

    def value(text: str, name: str, **labels: str) -> float:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return 0.0

    body = first["body"]
    assert value(body, "trio_tproxy_bytes_total", outbound="direct", direction="down") == 20000
    assert value(body, "trio_tproxy_active_flows", network="tcp") == 1
    assert value(body, "trio_tproxy_outbound_delay_milliseconds", outbound="direct") == 33
    flow.counts.down += 5000  # type: ignore[misc]
    api.rt.tracker.remove(flow, "done")
    body = (await api.get("/metrics"))["body"]
    assert value(body, "trio_tproxy_bytes_total", outbound="direct", direction="down") == 25000
    assert value(body, "trio_tproxy_flows_total", outbound="direct", inbound="tp-in",
                 network="tcp", outcome="ok") == 1  # fmt: skip
    assert value(body, "trio_tproxy_sniffed_total", protocol="tls") == 1
    assert value(body, "trio_tproxy_active_flows", network="tcp") == 0


@pytest.fixture
def ui_dir(tmp_path: Path) -> Path:
    (tmp_path / "ui").mkdir()
    (tmp_path / "ui" / "index.html").write_text("<html>dash</html>")
    (tmp_path / "ui" / "assets").mkdir()
    (tmp_path / "ui" / "assets" / "app.js").write_text("console.log(1)")
    (tmp_path / "ui" / "assets" / "f.woff2").write_bytes(b"wOF2")
    (tmp_path / "secret.txt").write_text("do not serve")
    (tmp_path / "ui" / "link").symlink_to(tmp_path / "secret.txt")
    return tmp_path / "ui"


async def test_static_files(nursery: trio.Nursery, ui_dir: Path) -> None:
    api = await start_api(nursery, ui_dir=ui_dir)
    index = await api.get("/ui/", headers={})
    assert index["status"] == 200 and index["body"] == "<html>dash</html>"
    assert index["headers"]["content-type"].startswith("text/html")
    js = await api.get("/ui/assets/app.js", headers={})
    assert js["status"] == 200 and js["headers"]["content-type"].startswith("text/javascript")
    font = await api.get("/ui/assets/f.woff2", headers={})
    assert font["headers"]["content-type"] == "font/woff2"
    redirect = await api.get("/ui", headers={})
    assert redirect["status"] == 307 and redirect["headers"]["location"] == "/ui/"
    for path in ("/ui/../secret.txt", "/ui/%2e%2e/secret.txt", "/ui/assets/..%2f..%2fsecret.txt",
                 "/ui/link", "/ui/nope.js", "/ui/%00", "/ui/..\\secret.txt"):  # fmt: skip
        got = await api.get(path, headers={})
        assert got["status"] == 404, path
        assert "do not serve" not in got["body"]


async def test_static_absent_without_ui_dir(api: Api) -> None:
    assert (await api.get("/ui/", headers={}))["status"] == 404


async def test_keep_alive_and_drain(nursery: trio.Nursery) -> None:
    """Two requests on one connection; cancelling the server closes a live stream."""
    api = await start_api(nursery)
    host, port = api.base.removeprefix("http://").split(":")

    def two() -> bytes:
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            req = f"GET /version HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\n\r\n"
            sock.sendall(req.encode() * 2)
            data = b""
            while data.count(b"HTTP/1.1 200") < 2:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data

    assert (await trio.to_thread.run_sync(two)).count(b"HTTP/1.1 200") == 2


async def test_server_stops_with_its_scope() -> None:
    rt, _ = make_runtime()
    sock = socket.create_server(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    results: list[dict[str, Any]] = []
    with trio.move_on_after(5):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_api, sock, Controller(FakeGateway(rt)))

            async def listen() -> None:
                results.append(await trio.to_thread.run_sync(
                    partial(apiclient.stream, f"http://127.0.0.1:{port}/memory", 100, timeout=5)
                ))  # fmt: skip

            nursery.start_soon(listen)
            await trio.sleep(1.5)
            nursery.cancel_scope.cancel()
        await trio.sleep(0.5)  # the client thread sees the end of the stream
    assert sock.fileno() == -1  # the listening socket is closed
    assert results and 1 <= len(results[0]["lines"]) < 100


def test_listener_errors_name_the_setting() -> None:
    from trio_tproxy.api import open_api_listener
    from trio_tproxy.config import HostPort
    from trio_tproxy.inbound.sockopt import SocketSetupError

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(SocketSetupError, match=rf"api.listen 127.0.0.1:{port}: "):
            open_api_listener(HostPort("127.0.0.1", port))
    six = open_api_listener(HostPort("::1", 0))
    try:
        assert six.family == socket.AF_INET6
    finally:
        six.close()
