"""Group outbounds through the real TPROXY path, with real SOCKS5 upstreams (microsocks)
behind delaying forwarders, so a test can slow a member down or kill it:

    client --LAN-- gateway (trio-tproxy: groups auto/fb/pick) --WAN-- server
                                                     fwd-a :1090 (+delay) -> microsocks :1080
                                                     fwd-b :1091 (+delay) -> microsocks :1081
                                                     probe :8204 (204 No Content)

The probes run every second with a 1.5 s timeout, so every change is expected within
interval + timeout (+ one probe's own delay and log polling).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

from netlab import Lab
from netlab.proxy import ProxyProcess
from netlab.servers import wait_listening

from .conftest import ECHO, PROXY_MARK, TPROXY_PORT, Gateway
from .test_api_gateway import API, SECRET, api, get_json

pytestmark = pytest.mark.netns

GROUP_PEERS = Path(__file__).with_name("group_peers.py")
SOCKS = {"a": 1080, "b": 1081}
FORWARD = {"a": 1090, "b": 1091}
PROBE = 8204
INTERVAL, TIMEOUT = 1.0, 1.5
SWITCH = INTERVAL + TIMEOUT + 1.5  # + a slowed probe's own time and log polling
HANDSHAKE = 2.0


def gateway_config(lab: Lab) -> str:
    s = lab.server
    members = "".join(
        f'[[outbounds]]\ntag = "{name}"\ntype = "socks"\nserver = "{s.ip4}:{port}"\n'
        f"mark = {PROXY_MARK}\n"
        for name, port in FORWARD.items()
    )
    probe = (f'url = "http://{s.ip4}:{PROBE}/generate_204"\n'
             f'interval = "{INTERVAL:g}s"\ntimeout = "{TIMEOUT:g}s"\n')  # fmt: skip
    return f"""
[log]
level = "debug"
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = {TPROXY_PORT}
network = ["tcp"]
[[outbounds]]
tag = "direct"
type = "direct"
mark = {PROXY_MARK}
{members}
[[outbounds]]
tag = "auto"
type = "urltest"
outbounds = ["b", "a"]
tolerance = "50ms"
{probe}
[[outbounds]]
tag = "fb"
type = "fallback"
outbounds = ["a", "b"]
{probe}
[[outbounds]]
tag = "pick"
type = "selector"
outbounds = ["a", "b"]
{probe}
[api]
listen = "127.0.0.1:9090"
secret = "{SECRET}"
[policy]
handshake = "{HANDSHAKE:g}s"
grace = "2s"
[[routing.rules]]
ip = ["{s.ip4}"]
outbound = "auto"
[[routing.rules]]
ip = ["{s.extra_ip4[0]}"]
outbound = "fb"
[[routing.rules]]
ip = ["{s.extra_ip4[1]}"]
outbound = "pick"
"""


@attrs.define
class Members:
    """The upstreams: microsocks a and b, each behind a forwarder we can slow or kill."""

    lab: Lab
    forwarders: dict[str, subprocess.Popen[str]] = attrs.field(factory=dict)

    def delay_file(self, name: str) -> Path:
        return self.lab.server.workdir / f"{name}.delay"

    def set_delay(self, name: str, ms: int) -> None:
        self.delay_file(name).write_text(str(ms))

    def start(self, name: str) -> None:
        s = self.lab.server
        proc = s.popen([sys.executable, str(GROUP_PEERS), "delay", "--host", s.ip4,
                        "--port", str(FORWARD[name]), "--to", f"{s.ip4}:{SOCKS[name]}",
                        "--delay-file", str(self.delay_file(name))])  # fmt: skip
        assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
        self.forwarders[name] = proc

    def kill(self, name: str) -> None:
        proc = self.forwarders.pop(name)
        proc.kill()
        proc.wait(5)


@pytest.fixture
def members(lab: Lab) -> Iterator[Members]:
    s = lab.server
    for port in SOCKS.values():
        proc = s.popen(["microsocks", "-i", s.ip4, "-p", str(port)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_listening(s, port, process=proc)
    probe = s.popen([sys.executable, str(GROUP_PEERS), "probe", "--host", s.ip4,
                     "--port", str(PROBE)])  # fmt: skip
    assert probe.stdout is not None and probe.stdout.readline().strip() == "listening"
    m = Members(lab)
    m.set_delay("a", 0)
    m.set_delay("b", 150)  # b answers a probe in ~0.5 s (3 chunks upstream), a at once
    for name in SOCKS:
        m.start(name)
    yield m
    for name in list(m.forwarders):
        m.kill(name)


def echo_through(gw: Gateway, host: str) -> None:
    """A few echo round trips (microsocks closes both ways on a half-close, so no bulk
    send-then-FIN client here)."""
    argv = [sys.executable, str(GROUP_PEERS), "trickle", "--host", host, "--port", str(ECHO),
            "--count", "3", "--gap", "0", "--timeout", "10"]  # fmt: skip
    out = gw.lab.client.run(argv, timeout=20).stdout
    result = json.loads(out.strip().splitlines()[-1])
    assert result["intact"] == 3, (result, gw.proxy.log()[-3000:])


def last_access(proxy: ProxyProcess, host: str) -> str:
    lines = [ln for ln in proxy.access_lines() if f"-> {host}:{ECHO}" in ln]
    assert lines, proxy.log()
    return lines[-1]


def wait_switch(proxy: ProxyProcess, text: str, since: float) -> float:
    """Wait for ``text`` in the log; seconds since ``since``."""
    proxy.wait_for(text, timeout=SWITCH + 3)
    took = time.monotonic() - since
    print(f"{took:.2f}s until: {text}")
    return took


def test_urltest_follows_the_fastest_and_a_flow_keeps_its_member(
    make_gateway: object, members: Members
) -> None:
    lab = members.lab
    host = lab.server.ip4
    gw: Gateway = make_gateway(gateway_config(lab))  # type: ignore[operator]
    proxy = gw.proxy
    # the first round: a is fast, b (first in order) is ~0.45 s slower
    proxy.wait_for("group 'auto' (urltest) uses 'a' (b ", timeout=5)
    echo_through(gw, host)
    assert "-> auto[a] (rule #0)" in last_access(proxy, host)
    # a reload keeps the probe history and the choice (a fresh state would start on b,
    # the first member, and say so)
    proxy.signal(signal.SIGHUP)
    proxy.wait_for("configuration reloaded")
    echo_through(gw, host)
    assert "-> auto[a] (rule #0)" in last_access(proxy, host)
    assert proxy.log().count("group 'auto' (urltest) uses") == 1

    # a long flow on a, then a slows down: new flows move to b, the long flow stays
    trickle = lab.client.popen([sys.executable, str(GROUP_PEERS), "trickle", "--host", host,
                                "--port", str(ECHO), "--count", "15", "--gap", "0.1"])  # fmt: skip
    assert trickle.stdout is not None
    assert json.loads(trickle.stdout.readline()) == {"connected": True}
    slowed = time.monotonic()
    members.set_delay("a", 400)
    took = wait_switch(proxy, "group 'auto' (urltest) now uses 'b' instead of 'a' (b ", slowed)
    assert took <= SWITCH, took
    echo_through(gw, host)
    assert "-> auto[b] (rule #0)" in last_access(proxy, host)
    out, _ = trickle.communicate(timeout=30)
    result = json.loads(out.strip().splitlines()[-1])
    assert (result["intact"], result["clean_eof"]) == (15, True), result
    long_flow = [ln for ln in proxy.access_lines() if "auto[a]" in ln and ln.endswith("done")]
    assert len(long_flow) == 3, proxy.access_lines()  # two echoes and the trickle

    # b dies: back to the slow but living a
    killed = time.monotonic()
    members.kill("b")
    took = wait_switch(
        proxy, "group 'auto' (urltest) now uses 'a' instead of 'b' (b failed", killed
    )
    assert took <= SWITCH, took
    echo_through(gw, host)
    assert "-> auto[a] (rule #0)" in last_access(proxy, host)

    # a dies too: flows fail at once, said once; the probes go on
    members.kill("a")
    proxy.wait_for("group 'auto' (urltest) has no healthy member (b failed, a failed)",
                   timeout=SWITCH + 3)  # fmt: skip
    for _ in range(2):
        result = gw.client("connect", host, ECHO, timeout=10)
        assert result["result"] in ("reset", "eof"), result
        assert float(result["seconds"]) < 0.5, result  # not the 2 s handshake timeout
    assert proxy.log().count("group 'auto' (urltest) has no healthy member") == 1
    assert "group 'auto': no healthy member" in last_access(proxy, host)


def test_fallback_order_recovery_and_selector_across_restart(
    make_gateway: object, members: Members, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    lab = members.lab
    fb_host, pick_host = lab.server.extra_ip4
    config = gateway_config(lab)
    gw: Gateway = make_gateway(config)  # type: ignore[operator]
    proxy = gw.proxy
    proxy.wait_for("group 'fb' (fallback) uses 'a'", timeout=5)
    echo_through(gw, fb_host)
    assert "-> fb[a] (rule #1)" in last_access(proxy, fb_host)

    killed = time.monotonic()
    members.kill("a")
    took = wait_switch(proxy, "group 'fb' (fallback) now uses 'b' instead of 'a' (a failed",
                       killed)  # fmt: skip
    assert took <= SWITCH, took
    echo_through(gw, fb_host)
    assert "-> fb[b] (rule #1)" in last_access(proxy, fb_host)

    # a recovers (slower than b, but first in order): new flows return to it
    members.set_delay("a", 300)
    revived = time.monotonic()
    members.start("a")
    took = wait_switch(proxy, "group 'fb' (fallback) now uses 'a' instead of 'b'", revived)
    assert took <= SWITCH, took
    echo_through(gw, fb_host)
    assert "-> fb[a] (rule #1)" in last_access(proxy, fb_host)

    # selector: the first member by default; a choice made through the controller API
    # (PUT /proxies/pick, as a dashboard does) takes effect for new flows at once, is
    # saved in the state directory, and a restarted gateway uses it
    echo_through(gw, pick_host)
    assert "-> pick[a] (rule #2)" in last_access(proxy, pick_host)
    put = api(lab.gateway, "request", method="PUT", url=API + "/proxies/pick",
              body=json.dumps({"name": "b"}))  # fmt: skip
    assert put["status"] == 204, put
    bad = api(lab.gateway, "request", method="PUT", url=API + "/proxies/pick",
              body=json.dumps({"name": "nobody"}))  # fmt: skip
    assert bad["status"] == 400, bad
    assert get_json(lab.gateway, "/proxies/pick")["now"] == "b"
    delay = api(lab.gateway, "request", method="GET",
                url=API + f"/proxies/a/delay?timeout=2000&url=http://{lab.server.ip4}:{PROBE}/generate_204")  # fmt: skip
    assert delay["status"] == 200 and json.loads(delay["body"])["delay"] > 0, delay
    echo_through(gw, pick_host)
    assert "-> pick[b] (rule #2)" in last_access(proxy, pick_host)
    assert json.loads((tmp_path / "state" / "selections.json").read_text()) == {"pick": "b"}
    assert proxy.stop() == 0
    restarted = ProxyProcess(lab.gateway, config, name="restarted")
    try:
        restarted.wait_ready()
        echo_through(Gateway(lab, restarted), pick_host)
        assert "-> pick[b] (rule #2)" in last_access(restarted, pick_host)
    finally:
        restarted.stop()
