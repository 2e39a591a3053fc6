"""`trio-tproxy service print`: a unit systemd accepts, with the contract of SPEC.md."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trio_tproxy.service import nofile_limit, unit

CONFIG = """
[[inbounds]]
tag = "in"
type = "tproxy"
port = 7893
[[outbounds]]
tag = "direct"
type = "direct"
[policy]
max_connections = {max_connections}
"""

CAPS = "CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE"


def service_print(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trio_tproxy", "service", "print", *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd, check=False)


def settings(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key] = value
    return out


def test_unit_has_the_contract(tmp_path: Path) -> None:
    (tmp_path / "gw.toml").write_text(CONFIG.format(max_connections=4096))
    done = service_print(tmp_path, "gw.toml")  # relative: resolved against the cwd
    assert done.returncode == 0, done.stderr
    s = settings(done.stdout)
    exec_start = s["ExecStart"].split()
    assert Path(exec_start[0]).is_absolute()
    assert exec_start[1:] == ["run", str(tmp_path / "gw.toml")] or exec_start[1:3] == [
        "-m", "trio_tproxy"]  # fmt: skip
    assert s["Type"] == "notify"
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert s["User"] == s["Group"] == "trio-tproxy"
    assert s["AmbientCapabilities"] == s["CapabilityBoundingSet"] == CAPS
    assert int(s["LimitNOFILE"]) >= 8192
    assert s["StateDirectory"] == "trio-tproxy"
    assert s["NoNewPrivileges"] == "yes"
    assert "PrivateNetwork" not in s  # TPROXY works in the host's network namespace
    assert "AF_NETLINK" in s["RestrictAddressFamilies"]  # nft, ip rule


def test_open_file_limit_follows_max_connections() -> None:
    assert nofile_limit(16) == 8192
    big = nofile_limit(6000)
    assert big > 6000 * 2  # two descriptors per flow at least
    text = unit(Path("/etc/trio-tproxy/gw.toml"), executable="/usr/bin/trio-tproxy",
                max_connections=6000, grace=5.0)  # fmt: skip
    assert settings(text)["LimitNOFILE"] == str(big)


def test_paths_that_need_quoting_and_home() -> None:
    text = unit(Path("/home/me/my gw.toml"), executable="/usr/bin/trio-tproxy",
                max_connections=10, grace=30.0)  # fmt: skip
    s = settings(text)
    assert s["ExecStart"] == '/usr/bin/trio-tproxy run "/home/me/my gw.toml"'
    assert s["ProtectHome"] == "read-only"  # the config must stay readable
    assert s["TimeoutStopSec"] == "45s"  # longer than the drain


def test_bad_config_is_an_error_not_a_unit(tmp_path: Path) -> None:
    (tmp_path / "gw.toml").write_text("[[inbounds]]\nport = 99999\n")
    done = service_print(tmp_path, "gw.toml")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    assert "$.inbounds[0]" in done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify_accepts_it_without_a_warning(tmp_path: Path) -> None:
    (tmp_path / "gw.toml").write_text(CONFIG.format(max_connections=4096))
    done = service_print(tmp_path, "gw.toml")
    assert done.returncode == 0, done.stderr
    path = tmp_path / "trio-tproxy.service"
    path.write_text(done.stdout)
    verify = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                            text=True, timeout=60, check=False)  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == "", verify.stderr
