"""The command line as a user meets it: exit codes, one line per error, no tracebacks."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

GOOD = """
[[inbounds]]
tag = "in"
type = "tproxy"
listen = "127.0.0.1"
port = {port}
network = "tcp"
[[outbounds]]
tag = "direct"
type = "direct"
"""
BAD = """
[log]
level = "chatty"
[[inbounds]]
tag = "in"
type = "tproxy"
port = 99999
[[outbounds]]
tag = "direct"
type = "direct"
[[routing.rules]]
outbound = "direct"
port = "1-2-3"
"""


def cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trio_tproxy", *args], capture_output=True,
                          text=True, timeout=timeout, check=False)  # fmt: skip


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("command", ["check", "run"])
def test_bad_config_is_rejected_with_paths(tmp_path: Path, command: str) -> None:
    result = cli(command, write(tmp_path, BAD))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        "port 99999 out of range 1-65535 @ $.inbounds[0].port",
        "expected one of debug | info | warning | error, got 'chatty' @ $.log.level",
        "bad port range '1-2-3' @ $.routing.rules[0].port",
    ]


def test_cross_check_errors(tmp_path: Path) -> None:
    text = GOOD.format(port=1) + 'mark = 1\n[[routing.rules]]\noutbound = "nowhere"\n'
    result = cli("check", write(tmp_path, text))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "rule has no condition (it would match everything) @ $.routing.rules[0]",
        "unknown outbound tag 'nowhere' @ $.routing.rules[0].outbound",
        "fwmark 1 equals an outbound mark: the proxy's own traffic would be diverted back "
        "into it @ $.firewall.fwmark",
    ]


def test_check_good_config(tmp_path: Path) -> None:
    result = cli("check", write(tmp_path, GOOD.format(port=12345)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") == 1
    assert ": ok: 1 inbound(s), 1 outbound(s), 0 rule(s)" in result.stdout


def test_missing_config_file(tmp_path: Path) -> None:
    result = cli("check", str(tmp_path / "nope.toml"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"config file not found: {tmp_path / 'nope.toml'}"


def test_run_port_in_use_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = cli("run", write(tmp_path, GOOD.format(port=port)))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: inbound 'in': cannot listen on tcp 127.0.0.1:{port}: address already in use"
    )


def test_help_for_every_command() -> None:
    for args in (["--help"], ["run", "--help"], ["check", "--help"]):
        result = cli(*args)
        assert result.returncode == 0
        assert "usage: trio-tproxy" in result.stdout


def test_check_takes_workers_and_api_without_warnings(tmp_path: Path) -> None:
    """Every section of the format is in effect now: nothing to warn about."""
    config = tmp_path / "c.toml"
    config.write_text(
        '[[inbounds]]\ntag = "in"\ntype = "tproxy"\nport = 12345\n'
        '[[outbounds]]\ntag = "direct"\ntype = "direct"\n'
        '[process]\nworkers = 2\n[api]\nlisten = "127.0.0.1:9090"\n'
    )
    result = cli("check", str(config))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == []
