"""The gateway run as an unprivileged user with exactly the unit's three capabilities.

`setpriv` drops to uid/gid 65534 (nobody) and keeps CAP_NET_ADMIN, CAP_NET_RAW and
CAP_NET_BIND_SERVICE as ambient capabilities, as systemd's `AmbientCapabilities=` does.
With them the gateway applies its own firewall (`firewall.auto`: nft and ip rule), binds
IP_TRANSPARENT listeners, a DNS listener on port 53 and marked upstream sockets, and
relays TCP and UDP over IPv4 and IPv6; without one it exits 1 naming it.

nobody cannot read the test interpreter when it lives under /root (pyenv: mode 700), so
the gateway runs on Debian's /usr/bin/python3 in a venv built once (cached, about 5 s)
under /opt, root-owned and world-readable, holding the package's dependencies; the
package itself is copied fresh for each test next to its config.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import trio_tproxy
from netlab import Lab, Netns
from netlab.proxy import ProxyProcess

from .conftest import ECHO, PROXY_MARK, TPROXY_PORT, run_client
from .test_udp_gateway import start_udp_server, udp_peer

pytestmark = pytest.mark.netns

ENV_ROOT = Path("/opt/trio-tproxy-testenv")
SYSTEM_PYTHON = Path("/usr/bin/python3")
PYPROJECT = Path(__file__).parents[2] / "pyproject.toml"
NOBODY = "65534"
THREE = "+net_admin,+net_raw,+net_bind_service"
UDP_ECHO = 9100
_BUILD_TIMEOUT = 300.0


def _dependencies() -> list[str]:
    with PYPROJECT.open("rb") as f:
        deps: list[str] = tomllib.load(f)["project"]["dependencies"]
    return deps


def _umask_022() -> None:
    os.umask(0o022)


def _build_env(target: Path) -> None:
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for argv in ([str(SYSTEM_PYTHON), "-m", "venv", str(partial)],
                 [str(partial / "bin/python"), "-m", "pip", "install", "-q",
                  "--disable-pip-version-check", *_dependencies()]):  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, timeout=_BUILD_TIMEOUT,
                                preexec_fn=_umask_022, check=False)  # fmt: skip
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            tail = (result.stderr or result.stdout).strip().splitlines()[-1:]
            pytest.skip(f"cannot build a venv for nobody ({argv[2]}): {' '.join(tail)}")
    partial.rename(target)


@pytest.fixture(scope="session")
def world_python() -> Path:
    """An interpreter with the dependencies that any user can run: built once, cached."""
    if os.geteuid() != 0:
        pytest.skip("needs root (setpriv, namespaces)")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed (util-linux)")
    if not SYSTEM_PYTHON.is_file():
        pytest.skip("/usr/bin/python3 is missing (scripts/setup installs python3)")
    version = subprocess.run([str(SYSTEM_PYTHON), "-c", "import sys; print(sys.version_info[:2])"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    if version.strip() < "(3, 11)":
        pytest.skip(f"/usr/bin/python3 is {version.strip()}; the package needs 3.11")
    key = hashlib.sha256(repr((version, _dependencies())).encode()).hexdigest()[:16]
    target = ENV_ROOT / key
    ENV_ROOT.mkdir(mode=0o755, exist_ok=True)
    ENV_ROOT.chmod(0o755)
    # Other test sessions on this machine may build the same environment at once.
    with (ENV_ROOT / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "bin/python").exists():
            _build_env(target)
    return target / "bin/python"


def _package_copy(dest: Path, python: Path) -> Path:
    """This source tree's package where nobody can read it, with bytecode compiled."""
    shutil.copytree(Path(trio_tproxy.__file__).parent, dest / "trio_tproxy",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    subprocess.run([str(python), "-m", "compileall", "-q", str(dest)], check=True,
                   capture_output=True, preexec_fn=_umask_022, timeout=120)  # fmt: skip
    return dest


class UnprivilegedProxy(ProxyProcess):
    """``trio-tproxy run`` in ``netns`` as nobody, with ``caps`` as ambient capabilities."""

    def __init__(self, netns: Netns, home: Path, python: Path, config_text: str,
                 caps: str) -> None:  # fmt: skip
        self.netns = netns
        self.config_path = home / "proxy.toml"
        self.config_path.write_text(config_text)
        self.config_path.chmod(0o644)
        self.log_path = home / "proxy.log"
        self._log = self.log_path.open("w")
        setpriv = ["setpriv", "--reuid", NOBODY, "--regid", NOBODY, "--clear-groups"]
        if caps:
            setpriv += ["--inh-caps", caps, "--ambient-caps", caps]
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "HOME": "/nonexistent", "PYTHONPATH": str(home), "PYTHONUNBUFFERED": "1"}  # fmt: skip
        self.process = netns.popen(
            [*setpriv, str(python), "-m", "trio_tproxy", "run", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=home, env=env,
        )  # fmt: skip


def gateway_config(lab: Lab) -> str:
    return f"""
[log]
level = "debug"
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = {TPROXY_PORT}
[[outbounds]]
tag = "direct"
type = "direct"
mark = {PROXY_MARK}
[dns]
listen = ["{lab.gateway.lan_ip4}:53"]
[firewall]
auto = true
lan_interfaces = ["{lab.gateway.lan_if}"]
bypass = []
[policy]
grace = "1s"
"""


@pytest.fixture
def nobody_home(lab: Lab, world_python: Path) -> Iterator[Path]:
    # The lab's scratch directories are root's (0700): let nobody through to its own.
    for directory in (lab.workdir, lab.gateway.workdir):
        directory.chmod(0o711)
    home = lab.gateway.workdir / "nobody"
    home.mkdir(mode=0o755)
    yield _package_copy(home, world_python)


def test_three_ambient_capabilities_are_enough(
    lab: Lab, world_python: Path, nobody_home: Path
) -> None:
    start_udp_server(lab.server, UDP_ECHO, [lab.server.ip4, lab.server.ip6])
    proxy = UnprivilegedProxy(lab.gateway, nobody_home, world_python, gateway_config(lab), THREE)
    try:
        proxy.wait_ready(timeout=30)
        status = Path(f"/proc/{proxy.pid}/status").read_text()
        assert "\nUid:\t65534\t65534\t65534\t65534\n" in status, status
        for host in (lab.server.ip4, lab.server.ip6):
            tcp = run_client(lab.client, "bulk", host, ECHO, size=100_000, timeout=10)
            assert tcp["intact"], tcp
            udp = udp_peer(lab.client, "echo", host=host, port=UDP_ECHO, count=5, size=300)
            assert udp["ok"] == 5 and udp["intact"], udp
        assert lab.gateway.run(["nft", "list", "table", "inet", "trio_tproxy"]).returncode == 0
        # doctor (as root) sees the unprivileged process and its three capabilities
        doctor = [sys.executable, "-m", "trio_tproxy", "doctor", str(proxy.config_path)]
        report = lab.gateway.run(doctor, check=False, timeout=60)
        assert report.returncode == 0, report.stdout + report.stderr
        assert (
            f"✔ gateway process {proxy.pid}: capabilities CAP_NET_ADMIN, CAP_NET_RAW, "
            "CAP_NET_BIND_SERVICE: all the config needs\n"
        ) in report.stdout, report.stdout
        assert f"(pid {proxy.pid} python, uid 65534)" in report.stdout, report.stdout
        # doctor as nobody without capabilities: advice where it cannot look, no traceback
        report = lab.gateway.run(["setpriv", "--reuid", NOBODY, "--regid", NOBODY,
                                  "--clear-groups", "env", f"PYTHONPATH={nobody_home}",
                                  str(world_python), "-m", "trio_tproxy",
                                  "doctor", str(proxy.config_path)], check=False, timeout=60)  # fmt: skip
        assert report.stderr == "" and report.returncode == 0, report.stdout + report.stderr
        assert (
            "⚠ kernel: cannot ask nft without CAP_NET_ADMIN — fix: run trio-tproxy doctor as root\n"
            in report.stdout
        )
        assert "⚠ gateway process: cannot tell which process listens" in report.stdout
    finally:
        code = proxy.stop()
    log = proxy.log()
    access = [line for line in log.splitlines() if "trio_tproxy.access:" in line]
    for proto, host in (("tcp", lab.server.ip4), ("tcp", lab.server.ip6),
                        ("udp", lab.server.ip4), ("udp", lab.server.ip6)):  # fmt: skip
        assert any(proto in line and host in line for line in access), (proto, host, log)
    assert code == 0, log
    assert "Traceback" not in log
    # firewall.auto removed its table on the way out, as nobody too
    assert "trio_tproxy" not in lab.gateway.nft_list()


@pytest.mark.parametrize(
    ("caps", "expected"),
    [
        ("", "error: CAP_NET_BIND_SERVICE is missing: needed for port 53 of dns.listen; "),
        ("+net_admin,+net_bind_service",
         "error: CAP_NET_RAW is missing: needed for raw reply packets (UDP) of inbound "
         f"'tproxy-in' (port {TPROXY_PORT}); run as root, or grant it"),
        ("+net_raw,+net_bind_service",
         f"error: CAP_NET_ADMIN is missing: needed for SO_MARK={PROXY_MARK} on outbound "
         "'direct', nft and ip rule for firewall.auto; run as root, or grant it"),
    ],
)  # fmt: skip
def test_a_missing_capability_is_named_in_the_last_line(
    lab: Lab, world_python: Path, nobody_home: Path, caps: str, expected: str
) -> None:
    config = gateway_config(lab)
    proxy = UnprivilegedProxy(lab.gateway, nobody_home, world_python, config, caps)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proxy.process.wait(30)
    code = proxy.stop()
    log = proxy.log()
    assert code == 1, log
    assert log.splitlines()[-1].startswith(expected), log
    assert "Traceback" not in log and "ready:" not in log
    assert "trio_tproxy" not in lab.gateway.nft_list()


def test_the_venv_for_nobody_is_world_readable(world_python: Path) -> None:
    # Guards the fixture: a venv under /root or with 0700 directories would make every
    # test above fail for the wrong reason.
    assert sys.executable != str(world_python)
    for part in (world_python.parents[1], *world_python.parents[1].parents):
        assert part.stat().st_mode & 0o005 == 0o005, part
