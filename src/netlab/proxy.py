"""trio-tproxy as a process in a lab namespace: start, wait until ready, read its log, stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from netlab.namespace import Netns

READY_MARK = "ready:"
_POLL = 0.02
# The suite's gateway tests again with worker processes: TRIO_TPROXY_TEST_WORKERS=2
# gives every config that sets no [process] section that many workers.
WORKERS_ENV = "TRIO_TPROXY_TEST_WORKERS"


def with_test_workers(config_text: str) -> str:
    workers = os.environ.get(WORKERS_ENV, "")
    if not workers or "[process]" in config_text:
        return config_text
    return f"{config_text.rstrip()}\n\n[process]\nworkers = {int(workers)}\n"


class ProxyProcess:
    """``trio-tproxy run CONFIG`` inside ``netns``; its stderr (the log) goes to a file."""

    def __init__(self, netns: Netns, config_text: str, name: str = "proxy",
                 env: Mapping[str, str | None] | None = None) -> None:  # fmt: skip
        """``env``: variables for the proxy over this process's (None removes one),
        e.g. PYTHONPATH to run another source tree."""
        self.netns = netns
        self.config_path = netns.workdir / f"{name}.toml"
        self.config_path.write_text(with_test_workers(config_text))
        self.log_path = netns.workdir / f"{name}.log"
        self._log = self.log_path.open("w")
        # selector choices go to the lab's own state directory, never the host's
        # /var/lib/trio-tproxy (a test that wants another one sets STATE_DIRECTORY)
        environment = {"STATE_DIRECTORY": str(netns.workdir / "state"), **os.environ,
                       "PYTHONUNBUFFERED": "1"}  # fmt: skip
        for key, value in (env or {}).items():
            if value is None:
                environment.pop(key, None)
            else:
                environment[key] = value
        self.process = netns.popen(
            [sys.executable, "-m", "trio_tproxy", "run", str(self.config_path)],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=Path.cwd(), env=environment,
        )  # fmt: skip

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text()

    def access_lines(self) -> list[str]:
        return [line for line in self.log().splitlines() if "trio_tproxy.access:" in line]

    def wait_for(self, text: str, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until ``text`` occurs ``count`` times in the log; return the log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if log.count(text) >= count:
                return log
            if self.process.poll() is not None:
                raise RuntimeError(f"trio-tproxy exited with {self.process.returncode}:\n{log}")
            time.sleep(_POLL)
        raise TimeoutError(f"{text!r} x{count} not in the trio-tproxy log after {timeout}s:\n"
                           f"{self.log()}")  # fmt: skip

    def wait_ready(self, timeout: float = 15.0) -> None:
        self.wait_for(READY_MARK, timeout)

    def pids(self) -> list[int]:
        """The process and its descendants (a supervisor's workers)."""
        children: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children.get(pid, [])
        return found

    def open_fds(self, kind: str = "") -> int:
        """Open descriptors of the process and its workers, or only those whose link
        starts with ``kind`` ("socket:")."""
        count = 0
        for pid in self.pids():
            fd_dir = f"/proc/{pid}/fd"
            try:
                names = os.listdir(fd_dir)
            except FileNotFoundError:  # exited while we looked
                continue
            for name in names:
                try:
                    if os.readlink(f"{fd_dir}/{name}").startswith(kind):
                        count += 1
                except FileNotFoundError:  # closed while we looked
                    continue
        return count

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; returns the exit code (SIGKILL if it does not stop)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
        return self.process.returncode
