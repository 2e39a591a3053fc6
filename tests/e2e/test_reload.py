"""SIGHUP under traffic (issue 13, defect 1): the next runtime is built off the event loop,
so a flow keeps moving while conf/main.toml-sized lists compile; SIGHUPs during a build
coalesce into one more build."""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ECHO, PEERS, Gateway, proxy_config

pytestmark = pytest.mark.netns

RULES = Path(__file__).resolve().parents[2] / "rules"
# The big lists of conf/main.toml: ~35,000 entries, ~0.3 s to compile here uncached.
BIG_LISTS = f"""
[geodata]
rules_dir = "{RULES}"
[[routing.rules]]
domain = ["geosite:category-ads-all"]
outbound = "block"
[[routing.rules]]
domain = ["geosite:cn", "domain:lan"]
outbound = "direct"
[[routing.rules]]
domain = ["geosite:geolocation-!cn"]
outbound = "direct"
"""
WORST_RTT = 0.100


def test_a_flow_keeps_moving_across_three_reloads(
    make_gateway: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIO_TPROXY_CACHE_DIR", "off")  # every reload compiles the lists
    gateway = make_gateway(proxy_config(extra=BIG_LISTS))
    lab, proxy = gateway.lab, gateway.proxy
    pinger = lab.client.popen([sys.executable, str(PEERS), "pingpong", "--host", lab.server.ip4,
                               "--port", str(ECHO), "--seconds", "6", "--timeout", "10"])  # fmt: skip
    assert pinger.stdout is not None
    assert json.loads(pinger.stdout.readline()) == {"connected": True}
    text = proxy.config_path.read_text()
    block = f'[[routing.rules]]\nip = ["{lab.server.ip4}"]\nport = {ECHO}\noutbound = "block"\n'
    for i in range(1, 4):
        time.sleep(0.5)
        proxy.config_path.write_text(text + (block if i == 3 else f"# edit {i}\n"))
        proxy.signal(signal.SIGHUP)
        proxy.wait_for("configuration reloaded", count=i, timeout=30)
    out, _ = pinger.communicate(timeout=30)
    result = json.loads(out.strip().splitlines()[-1])
    print("pingpong across three reloads:", result)
    assert "error" not in result, result
    assert result["count"] > 100
    assert result["worst"] < WORST_RTT, result
    # the established flow kept its runtime; a new one follows the new block rule
    blocked = gateway.client("connect", lab.server.ip4, ECHO, timeout=5)
    assert blocked["result"] in ("reset", "eof"), blocked
    proxy.wait_for("-> block (rule #3)")


def test_sighups_during_a_build_coalesce_into_one_more(
    make_gateway: Callable[..., Gateway], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRIO_TPROXY_CACHE_DIR", "off")
    proxy = make_gateway(proxy_config(extra=BIG_LISTS)).proxy
    proxy.signal(signal.SIGHUP)
    proxy.wait_for("reloading the configuration", timeout=10)
    for _ in range(3):  # while the first build runs (~0.3 s)
        proxy.signal(signal.SIGHUP)
        time.sleep(0.02)
    proxy.wait_for("configuration reloaded", count=2, timeout=30)
    time.sleep(1.5)  # a third build would have started and finished by now
    log = proxy.log()
    assert log.count("reloading the configuration") == 2
    assert log.count("configuration reloaded") == 2
    assert proxy.process.poll() is None
