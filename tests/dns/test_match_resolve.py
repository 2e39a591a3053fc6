"""`trio-tproxy match --resolve` asks the built-in DNS (the configured servers), never the
system resolver."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from trio_tproxy.cli import main

from .conftest import config_text
from .fake_dns import FakeDns

ROUTING = """
[routing]
domain_strategy = "ip_if_non_match"
[[routing.rules]]
ip = ["10.66.0.0/16"]
outbound = "block"
"""


@pytest.fixture
def setup(tmp_path: Path, rules_dir: Path,
          fake_dns: Callable[..., FakeDns]) -> tuple[Path, FakeDns]:  # fmt: skip
    upstream = fake_dns({"inside.example": [("A", "10.66.1.1")],
                         "outside.example": [("A", "10.67.1.1")]})  # fmt: skip
    dns = f'[[dns.servers]]\naddress = "127.0.0.1:{upstream.port}"\n'
    config = tmp_path / "config.toml"
    config.write_text(config_text(dns, rules_dir, ROUTING))
    return config, upstream


@pytest.mark.parametrize(("name", "outbound"), [("inside.example", "block"),
                                                ("outside.example", "direct")])  # fmt: skip
def test_match_resolve_uses_the_configured_servers(
    setup: tuple[Path, FakeDns], capsys: pytest.CaptureFixture[str], name: str, outbound: str
) -> None:
    config, upstream = setup
    assert main(["match", name, "-c", str(config), "--resolve", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["outbound"] == outbound
    assert upstream.count(name) == 1
