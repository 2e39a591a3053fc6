"""Gateway.reload without the kernel (issue 13, defect 1): the build runs in a worker
thread with the collector paused, leaves the collector and switch interval as they
were, bounds how many replaced runtimes stay in memory, and rejects a bad config."""

from __future__ import annotations

import gc
import logging
import sys
import threading
import weakref
from pathlib import Path

import pytest
import trio

from trio_tproxy.app import RETIRED_RUNTIMES_KEPT, Gateway
from trio_tproxy.config import load_config
from trio_tproxy.runtime import Runtime

CONFIG = """
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = 12345
[[outbounds]]
tag = "direct"
type = "direct"
[geodata]
rules_dir = "{rules}"
[[routing.rules]]
domain = ["geosite:big"]
outbound = "direct"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "big").write_text("".join(f"domain:site{i}.example\n" for i in range(2000)))
    path = tmp_path / "gw.toml"
    path.write_text(CONFIG.format(rules=rules))
    return path


async def test_reload_builds_off_the_loop_and_restores_the_collector(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = Gateway(config, Runtime.build(load_config(config)))
    seen: dict[str, object] = {}
    build = Runtime.build

    def spy(*args: object, **kw: object) -> Runtime:
        seen["thread"] = threading.current_thread() is not threading.main_thread()
        seen["gc"] = gc.isenabled()
        seen["interval"] = sys.getswitchinterval()
        return build(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Runtime, "build", spy)
    interval = sys.getswitchinterval()
    old = gateway.runtime
    await gateway.reload()
    assert seen == {"thread": True, "gc": False, "interval": 0.001}
    assert gc.isenabled() and sys.getswitchinterval() == interval
    assert gateway.runtime is not old


async def test_replaced_runtimes_in_memory_stay_bounded(config: Path) -> None:
    gateway = Gateway(config, Runtime.build(load_config(config)))
    replaced = []
    gc.disable()  # no automatic collection: only the reload's own may free them
    try:
        for _ in range(6):
            replaced.append(weakref.ref(gateway.runtime.dns))  # in a cycle: needs a collection
            await gateway.reload()
    finally:
        gc.enable()
    alive = [ref for ref in replaced if ref() is not None]
    # at most KEPT found at the last reload's start, plus the one it replaced
    assert len(alive) <= RETIRED_RUNTIMES_KEPT + 1


async def test_a_bad_config_is_rejected_and_the_running_one_kept(
    config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gateway = Gateway(config, Runtime.build(load_config(config)))
    running = gateway.runtime
    text = await trio.Path(config).read_text()
    await trio.Path(config).write_text(text + "[dns]\ncache = 'yes'\n")
    caplog.set_level(logging.INFO, "trio_tproxy.app")
    await gateway.reload()
    assert gateway.runtime is running
    assert "reload rejected, keeping the running configuration" in caplog.text
    assert "expected true or false, got 'yes' @ $.dns.cache" in caplog.text
    assert gc.isenabled()

