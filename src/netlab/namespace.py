"""Network namespaces we own: create, run processes inside, destroy, and sweep leftovers.

Every command that touches networking state runs as `ip netns exec NS ...`; the only
commands run in the host namespace are `ip netns add/del/list/pids` and `ip link add
... netns NS` (which creates both veth ends directly inside our namespaces).  Nothing
here can change the host's own interfaces, routes or ruleset.

Names are `PREFIX-XXXXXX-R` (six random hex digits, one role letter).  A process that
owns namespaces holds an exclusive flock on `/run/trio-tproxy-netlab/PREFIX-XXXXXX.lock`
for as long as they live; the kernel drops the lock when the process dies, however it
dies, so `cleanup_stale` can tell a crashed run's leftovers from a concurrent live run
(other engineers' test sessions use the same prefix on the same machine).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

logger = logging.getLogger("netlab.namespace")

_N = TypeVar("_N", bound="Netns")

LOCK_DIR = Path("/run/trio-tproxy-netlab")
# Short enough that "PREFIX-XXXXXX-RR" (a veth name) fits IFNAMSIZ - 1 = 15 characters.
_PREFIX = re.compile(r"[a-z][a-z0-9]{0,4}")
_HOST_TIMEOUT = 10.0
# SIGTERM grace for processes we started, before SIGKILL.
_TERM_GRACE = 1.0
# Rounds of `ip netns pids` + SIGKILL: a process can fork while we kill its parent.
_KILL_ROUNDS = 5


class CommandError(subprocess.CalledProcessError):
    """A CalledProcessError whose message includes what the command printed on stderr."""

    def __str__(self) -> str:
        detail = (self.stderr or "").strip() if isinstance(self.stderr, str) else ""
        return f"{super().__str__()}: {detail}" if detail else super().__str__()


def run_checked(
    argv: Sequence[str], *, timeout: float, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """subprocess.run with text I/O, captured output, and stderr in the error message."""
    result = subprocess.run(
        list(argv), capture_output=True, text=True, timeout=timeout, input=input, check=False
    )
    if check and result.returncode != 0:
        raise CommandError(result.returncode, result.args, result.stdout, result.stderr)
    return result


def check_prefix(prefix: str) -> str:
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"netlab prefix must match {_PREFIX.pattern}, got {prefix!r}")
    return prefix


def name_pattern(prefix: str) -> re.Pattern[str]:
    """The namespace names a lab with this prefix creates; group 1 is the lab tag."""
    return re.compile(rf"({re.escape(check_prefix(prefix))}-[0-9a-f]{{6}})-[a-z]")


class Netns:
    """One network namespace we created, and the processes we started inside it."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        # Scratch space for config files and logs of processes in this namespace;
        # removed with the namespace.
        self.workdir = workdir
        self._processes: list[subprocess.Popen[str]] = []

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 10.0,
        check: bool = True,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the namespace; text output captured; CommandError if check."""
        return run_checked(self.exec_argv(argv), timeout=timeout, check=check, input=input)

    def popen(
        self,
        argv: Sequence[str],
        *,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        stdout: int | IO[Any] | None = subprocess.PIPE,
        stderr: int | IO[Any] | None = subprocess.PIPE,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[str]:
        """Start argv inside the namespace (text mode); killed when the namespace goes.

        `ip netns exec` execs argv in place, so the Popen's pid is argv's own pid.
        stdout/stderr are pipes by default: read them, or pass DEVNULL or a file for a
        chatty process (a full 64 KiB pipe blocks it).
        """
        process = subprocess.Popen(
            self.exec_argv(argv),
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env=env,
            text=True,
        )
        self._processes.append(process)
        return process

    def pids(self) -> list[int]:
        """Every process whose network namespace is this one (ours or their children)."""
        return _namespace_pids(self.name)

    def kill_processes(self) -> None:
        """SIGTERM what we started, SIGKILL after a grace period, then any straggler."""
        _terminate(self._processes)
        self._processes.clear()
        _kill_namespace_pids(self.name)


def _terminate(processes: list[subprocess.Popen[str]]) -> None:
    alive = [p for p in processes if p.poll() is None]
    for process in alive:
        process.terminate()
    deadline = time.monotonic() + _TERM_GRACE
    for process in alive:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=_HOST_TIMEOUT)
    for process in processes:
        # Close our pipe ends; leaving them to the GC triggers ResourceWarnings.
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def _namespace_pids(name: str) -> list[int]:
    result = run_checked(["ip", "netns", "pids", name], timeout=_HOST_TIMEOUT, check=False)
    return [int(word) for word in result.stdout.split() if word.isdigit()]


def _kill_namespace_pids(name: str) -> None:
    for _ in range(_KILL_ROUNDS):
        pids = _namespace_pids(name)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    logger.warning("processes survive in namespace %s", name)


class OwnerLock:
    """The flock that marks a lab tag as owned by a live process."""

    def __init__(self, tag: str) -> None:
        LOCK_DIR.mkdir(mode=0o755, exist_ok=True)
        self.path = LOCK_DIR / f"{tag}.lock"
        self._fd: int | None = None
        for _ in range(_KILL_ROUNDS):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A concurrent cleanup_stale may have unlinked the file between our open and
            # flock; a lock on an unlinked file protects nothing, so try again.
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    self._fd = fd
                    return
            os.close(fd)
        raise RuntimeError(f"could not take the netlab owner lock {self.path}")

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None

    @staticmethod
    def is_held(tag: str) -> bool:
        try:
            fd = os.open(LOCK_DIR / f"{tag}.lock", os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


class Reservation:
    """A fresh lab tag with its owner lock, namespaces and scratch directory.

    Everything it made is undone by `close()`, which is idempotent, runs at interpreter
    exit if nobody called it, and tolerates a half-finished setup.
    """

    def __init__(self, prefix: str) -> None:
        self.tag = f"{check_prefix(prefix)}-{secrets.token_hex(3)}"
        self._lock = OwnerLock(self.tag)
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-"))
        self.namespaces: list[Netns] = []
        # A forked child inherits _LIVE; only the creating process may close the lab.
        self._owner_pid = os.getpid()
        _LIVE[self.tag] = self.close

    def add_namespace(self, role: str, factory: Callable[[str, Path], _N]) -> _N:
        name = f"{self.tag}-{role}"
        workdir = self.workdir / role
        workdir.mkdir()
        run_checked(["ip", "netns", "add", name], timeout=_HOST_TIMEOUT)
        netns = factory(name, workdir)
        self.namespaces.append(netns)
        return netns

    def close(self) -> None:
        if os.getpid() != self._owner_pid:
            return
        _LIVE.pop(self.tag, None)
        for netns in self.namespaces:
            try:
                netns.kill_processes()
            except (OSError, subprocess.SubprocessError):
                # Still delete the namespaces: a survivor only delays the kernel's
                # teardown, a kept namespace would leak.
                logger.exception("killing processes in %s failed", netns.name)
        for netns in self.namespaces:
            # Deleting a namespace also destroys the veths inside it (and their peers).
            run_checked(["ip", "netns", "del", netns.name], timeout=_HOST_TIMEOUT, check=False)
        self.namespaces.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)
        self._lock.release()


_LIVE: dict[str, Callable[[], None]] = {}


@atexit.register
def _close_all_live() -> None:
    for close in list(_LIVE.values()):
        try:
            close()
        except Exception:  # an exit hook must try every lab
            logger.exception("netlab cleanup at exit failed")


@contextlib.contextmanager
def scratch_namespace(prefix: str = "tpt") -> Iterator[Netns]:
    """One empty namespace (loopback up), removed on exit: for checking rulesets."""
    reservation = Reservation(prefix)
    try:
        netns = reservation.add_namespace("x", Netns)
        netns.run(["ip", "link", "set", "lo", "up"])
        yield netns
    finally:
        reservation.close()


def list_namespaces() -> list[str]:
    result = run_checked(["ip", "netns", "list"], timeout=_HOST_TIMEOUT)
    # Lines look like "name" or "name (id: 3)".
    return [line.split()[0] for line in result.stdout.splitlines() if line.strip()]


def cleanup_stale(prefix: str = "tpt") -> list[str]:
    """Remove namespaces `PREFIX-XXXXXX-R` whose owning process is gone.

    Namespaces of a live lab (this process's or a concurrent run's) are left alone.
    Returns the names removed.
    """
    pattern = name_pattern(prefix)
    removed: list[str] = []
    for name in list_namespaces():
        match = pattern.fullmatch(name)
        if match is None or OwnerLock.is_held(match.group(1)):
            continue
        _kill_namespace_pids(name)
        run_checked(["ip", "netns", "del", name], timeout=_HOST_TIMEOUT, check=False)
        removed.append(name)
    # Lock files of dead owners (also those whose namespaces are already gone).
    tag_pattern = re.compile(rf"{re.escape(prefix)}-[0-9a-f]{{6}}")
    for lock in LOCK_DIR.glob(f"{prefix}-*.lock") if LOCK_DIR.is_dir() else ():
        tag = lock.name.removesuffix(".lock")
        if tag_pattern.fullmatch(tag) and not OwnerLock.is_held(tag):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
    return removed
