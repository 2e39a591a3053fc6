"""The controller API on a real gateway: live flows through TPROXY, seen and closed.

The API listens on the gateway namespace's loopback; requests are made from inside that
namespace (tests/api/apiclient.py), the flows come from the client namespace.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from netlab import Lab, Netns

from .conftest import ECHO, PROXY_MARK, SOURCE, TPROXY_PORT, Gateway
from .test_udp_gateway import start_udp_server

APICLIENT = Path(__file__).parents[1] / "api" / "apiclient.py"
API_PEERS = Path(__file__).with_name("api_peers.py")
REPO = Path(__file__).resolve().parents[2]
YACD = REPO.parent / "shared" / "data" / "dashboards" / "yacd"
SECRET = "lab-secret"
AUTH = {"authorization": f"Bearer {SECRET}"}
API = "http://127.0.0.1:9090"
UDP_PORT = 9100

pytestmark = pytest.mark.netns


def api_config(ui_dir: str = "") -> str:
    return f"""
[log]
level = "info"
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = {TPROXY_PORT}
network = ["tcp", "udp"]
[inbounds.sniffing]
enabled = true
route_only = true
[[outbounds]]
tag = "direct"
type = "direct"
mark = {PROXY_MARK}
[[outbounds]]
tag = "block"
type = "block"
[[outbounds]]
tag = "pick"
type = "selector"
outbounds = ["direct", "block"]
[[routing.rules]]
domain = ["domain:example.test"]
outbound = "direct"
[[routing.rules]]
port = "{UDP_PORT}"
network = ["udp"]
outbound = "direct"
[policy]
grace = "2s"
[api]
listen = "127.0.0.1:9090"
secret = "{SECRET}"
ui_dir = "{ui_dir}"
"""


def api(ns: Netns, op: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("headers", AUTH)
    out = ns.run([sys.executable, str(APICLIENT), json.dumps({"op": op, **spec})], timeout=30)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def get_json(ns: Netns, path: str) -> Any:
    got = api(ns, "request", method="GET", url=API + path)
    assert got["status"] == 200, got
    return json.loads(got["body"])


def start_download(lab: Lab) -> subprocess.Popen[str]:
    holder = lab.client.popen([sys.executable, str(API_PEERS), "download", "--host",
                               lab.server.ip4, "--port", str(SOURCE), "--timeout", "30"])  # fmt: skip
    assert holder.stdout is not None
    assert json.loads(holder.stdout.readline()) == {"holding": 1}
    return holder


def find(connections: list[dict[str, Any]], **meta: str) -> dict[str, Any] | None:
    for c in connections:
        if all(c["metadata"].get(k) == v for k, v in meta.items()):
            return c
    return None


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


@pytest.fixture
def api_gateway(make_gateway: Callable[..., Gateway]) -> Iterator[Gateway]:
    gateway = make_gateway(api_config())
    yield gateway
    log = gateway.proxy.log()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


def test_live_tcp_flow(api_gateway: Gateway) -> None:
    lab = api_gateway.lab
    gw = lab.gateway
    assert api(gw, "request", method="GET", url=API + "/connections", headers={})["status"] == 401
    holder = start_download(lab)
    try:
        got = get_json(gw, "/connections")
        flow = find(got["connections"], host="dl.example.test")
        assert flow is not None, got
        meta = flow["metadata"]
        assert meta["network"] == "tcp" and meta["type"] == "TProxy"
        assert meta["sourceIP"] == lab.client.ip4 and meta["destinationIP"] == lab.server.ip4
        assert meta["destinationPort"] == str(SOURCE) and meta["sourcePort"].isdigit()
        assert meta["sniffHost"] == "dl.example.test" and meta["inboundName"] == "tproxy-in"
        assert flow["chains"] == ["direct"]
        assert (flow["rule"], flow["rulePayload"]) == ("DomainSuffix", "example.test")
        assert flow["upload"] > 0 and isinstance(flow["download"], int)
        rules = get_json(gw, "/rules")["rules"]
        assert {"type": "DomainSuffix", "payload": "example.test"}.items() <= rules[0].items()
        assert got["downloadTotal"] >= flow["download"]

        traffic = api(gw, "stream", url=API + "/traffic", count=2)
        assert traffic["status"] == 200 and any(x["down"] > 0 for x in traffic["lines"])
        ws = api(gw, "websocket", url=API + f"/traffic?token={SECRET}", count=1, headers={})
        assert ws["status"] == 101 and ws["messages"][0]["down"] > 0

        first = api(gw, "request", method="GET", url=API + "/metrics")["body"]
        time.sleep(0.5)
        second = api(gw, "request", method="GET", url=API + "/metrics")["body"]
        down = [metric(t, "trio_tproxy_bytes_total", outbound="direct", direction="down")
                for t in (first, second)]  # fmt: skip
        assert 0 < down[0] < down[1]
        assert metric(second, "trio_tproxy_active_flows", network="tcp") >= 1
        assert metric(second, "process_open_fds") > 0

        later = get_json(gw, "/connections")
        assert later["downloadTotal"] >= got["downloadTotal"]  # only grows
        start = time.monotonic()
        deleted = api(gw, "request", method="DELETE", url=API + f"/connections/{flow['id']}")
        assert deleted["status"] == 204
        holder.wait(5)
        took = time.monotonic() - start
        assert holder.stdout is not None
        result = json.loads(holder.stdout.read().strip().splitlines()[-1])
        assert result["ended"] in ("reset", "eof") and took < 2.0, (result, took)
    finally:
        holder.kill()
    api_gateway.proxy.wait_for("closed by API")
    assert find(get_json(gw, "/connections")["connections"], host="dl.example.test") is None
    after = get_json(gw, "/connections")
    assert after["downloadTotal"] >= later["downloadTotal"]
    body = api(gw, "request", method="GET", url=API + "/metrics")["body"]
    assert metric(body, "trio_tproxy_flows_total", outbound="direct", outcome="closed") == 1


def test_endpoint_shapes(api_gateway: Gateway) -> None:
    gw = api_gateway.lab.gateway
    assert get_json(gw, "/version")["meta"] is True
    cfg = get_json(gw, "/configs")
    assert cfg["tproxy-port"] == TPROXY_PORT and cfg["redir-port"] == 0
    proxies = get_json(gw, "/proxies")["proxies"]
    assert proxies["direct"]["type"] == "Direct" and proxies["block"]["type"] == "Reject"
    assert proxies["pick"]["type"] == "Selector" and proxies["pick"]["all"] == ["direct", "block"]
    assert proxies["GLOBAL"]["all"] == ["direct", "block", "pick"]
    assert get_json(gw, "/providers/proxies") == {"providers": {}}
    assert get_json(gw, "/providers/rules") == {"providers": {}}
    assert get_json(gw, "/rules")["rules"][-1]["type"] == "Match"
    memory = api(gw, "stream", url=API + "/memory", count=1)
    assert memory["lines"][0]["inuse"] > 0
    spec = {"op": "websocket", "url": API + f"/logs?level=info&token={SECRET}", "count": 1,
            "headers": {}, "timeout": 10}  # fmt: skip
    logs = gw.popen([sys.executable, str(APICLIENT), json.dumps(spec)])
    time.sleep(0.5)  # subscribed
    lab = api_gateway.lab
    assert api_gateway.client("many", lab.server.ip4, ECHO, count=1, size=100)["ok"] == 1
    out, _ = logs.communicate(timeout=15)
    got = json.loads(out.strip().splitlines()[-1])
    assert got["status"] == 101 and got["messages"][0]["type"] == "info", got
    assert "tproxy-in -> direct" in got["messages"][0]["payload"], got  # the access line
    dns = get_json(gw, "/dns/query?name=localhost&type=A")
    assert dns["Question"][0]["Qtype"] == 1
    preflight = api(gw, "request", method="OPTIONS", url=API + "/connections", headers={})
    assert preflight["status"] == 204
    assert preflight["headers"]["access-control-allow-private-network"] == "true"


def test_gateway_stops_with_streams_open(api_gateway: Gateway) -> None:
    """SIGTERM with dashboards attached: the API goes with the listeners, exit 0."""
    gw = api_gateway.lab.gateway
    spec = {"op": "stream", "url": API + "/traffic", "count": 1000, "headers": AUTH,
            "timeout": 30}  # fmt: skip
    streams = [gw.popen([sys.executable, str(APICLIENT), json.dumps(spec)]),
               gw.popen([sys.executable, str(APICLIENT), json.dumps(
                   {**spec, "op": "websocket", "url": API + "/logs"})])]  # fmt: skip
    time.sleep(1.5)
    assert all(s.poll() is None for s in streams)
    start = time.monotonic()
    assert api_gateway.proxy.stop() == 0
    assert time.monotonic() - start < 2.0  # no flows: nothing to wait for
    for s in streams:
        out, _ = s.communicate(timeout=5)
        assert json.loads(out.strip().splitlines()[-1])["status"] in (200, 101)


def test_live_udp_session_closed(api_gateway: Gateway) -> None:
    lab = api_gateway.lab
    gw = lab.gateway
    start_udp_server(lab.server, UDP_PORT, [lab.server.ip4])
    udp_peers = Path(__file__).with_name("udp_peers.py")
    streamer = lab.client.popen([sys.executable, str(udp_peers), "stream", "--host",
                                 lab.server.ip4, "--port", str(UDP_PORT), "--count", "60",
                                 "--interval", "100", "--timeout", "7"])  # fmt: skip
    try:
        flow = None
        for _ in range(50):
            flow = find(get_json(gw, "/connections")["connections"], network="udp",
                        destinationPort=str(UDP_PORT))  # fmt: skip
            if flow is not None and flow["download"] > 0:
                break
            time.sleep(0.1)
        assert flow is not None
        assert flow["metadata"]["type"] == "TProxy" and flow["chains"] == ["direct"]
        assert (flow["rule"], flow["rulePayload"]) == (
            "AND",
            f"((DstPort,{UDP_PORT}),(Network,udp))",
        )
        assert api(gw, "request", method="DELETE", url=API + "/connections")["status"] == 204
        api_gateway.proxy.wait_for("closed by API", timeout=2)
        gone = find(get_json(gw, "/connections")["connections"], network="udp",
                    destinationPort=str(UDP_PORT))  # fmt: skip
        assert gone is None or gone["id"] != flow["id"]
        out, _ = streamer.communicate(timeout=20)
        result = json.loads(out.strip().splitlines()[-1])
        assert result["got"] < 60  # the session's replies stopped with it
    finally:
        streamer.kill()


@pytest.mark.parametrize("origin", ["ui_dir", "elsewhere"])
def test_yacd_in_headless_chromium(make_gateway: Callable[..., Gateway], origin: str) -> None:
    """The real dashboard shows a live connection and the groups: served from ui_dir, and
    served from another origin (every API call then crosses CORS, preflights included)."""
    if not (YACD / "index.html").is_file():
        pytest.skip(f"no yacd build at {YACD}")
    chromium = next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser")
                     if Path(p).exists()), None)  # fmt: skip
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/setup installs it)")
    gateway = make_gateway(api_config(ui_dir=str(YACD) if origin == "ui_dir" else ""))
    lab = gateway.lab
    site = f"{API}/ui/"
    if origin == "elsewhere":
        web = lab.gateway.popen([sys.executable, "-m", "http.server", "8088", "--bind",
                                 "127.0.0.1", "--directory", str(YACD)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        site = "http://127.0.0.1:8088/"
        for _ in range(50):
            if (
                web.poll() is not None
                or lab.gateway.run(["ss", "-Htln", "sport = :8088"], check=False).stdout.strip()
            ):
                break
            time.sleep(0.1)
    holder = start_download(lab)
    try:
        conns = render(lab.gateway, chromium, site, "connections", "dl.example.test")
        assert "dl.example.test" in conns, conns[:2000]
        assert "DomainSuffix" in conns
        groups = render(lab.gateway, chromium, site, "proxies", "Selector")
        assert "pick" in groups and "Selector" in groups, groups[:2000]
    finally:
        holder.kill()


def render(ns: Netns, chromium: str, site: str, page: str, expect: str) -> str:
    """The text of yacd's ``page`` once its scripts ran (headless, inside the namespace).

    ``--virtual-time-budget`` lets the page's timers run, but a busy machine may deliver
    the API's answers after the budget: up to three tries, each with a longer one."""
    url = f"{site}?hostname=127.0.0.1&port=9090&secret={SECRET}#/{page}"
    text = ""
    for budget in (8000, 20000, 40000):
        with tempfile.TemporaryDirectory(prefix="trio-tproxy-chromium-") as profile:
            out = ns.run([
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile}",
                f"--virtual-time-budget={budget}", "--dump-dom", url,
            ], timeout=120)  # fmt: skip
        body = out.stdout[out.stdout.find("<body") :]
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))
        if expect in text:
            break
    return text
