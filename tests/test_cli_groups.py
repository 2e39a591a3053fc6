"""Groups where a user meets them without a network: ``match`` names the group (and a
selector's member, from the state directory), the access log line says ``auto[hk]``."""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path

import pytest

from trio_tproxy.access import FlowRecord, log_access
from trio_tproxy.cli import main
from trio_tproxy.outbound.selections import FILE_NAME
from trio_tproxy.route import Decision

CONFIG = """
[[inbounds]]
tag = "in"
type = "tproxy"
port = 12345
[[outbounds]]
tag = "direct"
type = "direct"
[[outbounds]]
tag = "hk"
type = "socks"
server = "192.0.2.1:1080"
[[outbounds]]
tag = "us"
type = "socks"
server = "192.0.2.2:1080"
[[outbounds]]
tag = "pick"
type = "selector"
outbounds = ["hk", "us"]
[[outbounds]]
tag = "auto"
type = "urltest"
outbounds = ["hk", "us"]
[[routing.rules]]
domain = ["domain:picked.test"]
outbound = "pick"
[[routing.rules]]
domain = ["domain:auto.test"]
outbound = "auto"
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    monkeypatch.setenv("TRIO_TPROXY_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "main.toml"
    path.write_text(CONFIG)
    return path


def match(config: Path, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert main(["match", *args, "-c", str(config)]) == 0
    return capsys.readouterr().out


def test_match_names_a_selectors_member(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = json.loads(match(config, capsys, "www.picked.test", "--json"))
    assert (out["outbound"], out["member"]) == ("pick", "hk")
    assert out["group"] == {"tag": "pick", "type": "selector", "members": ["hk", "us"]}
    state = config.parent / "state"
    state.mkdir()
    (state / FILE_NAME).write_text('{"pick": "us"}')
    assert json.loads(match(config, capsys, "www.picked.test", "--json"))["member"] == "us"
    text = match(config, capsys, "www.picked.test")
    assert "group:    pick (selector: hk, us)\nmember:   us\n" in text


def test_match_urltest_member_is_up_to_the_probes(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = json.loads(match(config, capsys, "auto.test", "--json"))
    assert (out["outbound"], out["member"], out["group"]["type"]) == ("auto", None, "urltest")
    assert "member:   chosen by probes while running" in match(config, capsys, "auto.test")
    plain = json.loads(match(config, capsys, "example.org", "--json"))
    assert plain["outbound"] == "direct" and "member" not in plain


async def test_access_log_names_group_and_member(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "trio_tproxy.access")
    src = (ipaddress.ip_address("10.0.0.2"), 40000)
    dst = (ipaddress.ip_address("192.0.2.9"), 443)
    record = FlowRecord(src, dst, "in", started=0.0, decision=Decision("auto", 1),
                        chain=("hk", "auto"))  # fmt: skip
    log_access(record, "tcp", 1, 2, "done")
    record = FlowRecord(src, dst, "in", started=0.0, decision=Decision("direct", None),
                        chain=("direct",))  # fmt: skip
    log_access(record, "tcp", 1, 2, "done")
    lines = [r.getMessage() for r in caplog.records]
    assert " -> auto[hk] (rule #1) up=1" in lines[0]
    assert " -> direct (default) up=1" in lines[1]
