"""``[process] workers = N``: one supervisor, a hub and N worker processes.

The supervisor is the process systemd (or a shell) started. It never runs an event
loop: it builds the runtime once (config, compiled rules, geodata), binds every
listening socket, and forks; the children share the runtime's pages copy-on-write
(``gc.freeze()`` first, so no collection in a child touches them). Then it only watches:

* **Workers** ``w1``..``wN`` serve the inbounds, each on its own SO_REUSEPORT sockets
  (the kernel spreads connections and UDP clients over them by a hash of the addresses,
  so a client's UDP session stays whole on one worker). Each takes 1/N of the limits.
* **The hub** serves what there is one of: dns.listen, the controller API (which shows
  every worker's flows) and the group probes, whose results it passes to the workers
  (workers/hub.py, workers/agent.py).
* Every socket stays open in the supervisor too, so a child that dies is started again
  (at once; within ``RESTART_BACKOFF`` when it keeps dying at start) on the same sockets:
  connections queued meanwhile wait for it, and only its own flows were lost.
* It applies and removes ``firewall.auto`` once, and sends READY=1 only when every child
  serves (each says so on its status pipe).
* SIGHUP: the supervisor builds the new runtime first. A bad config is rejected once,
  here, and nothing changes; a good one becomes the template for restarts and every
  child reloads as one process does. "configuration reloaded" is logged when all have.
* SIGTERM/SIGINT: every child drains (``policy.grace``) and exits; then the firewall
  goes and the supervisor exits 0.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import secrets
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from ..config import Config, ConfigErrors, load_config
from ..firewall.apply import AutoFirewall
from ..limits import check_connection_budget, raise_nofile_limit
from ..listeners import Listeners
from ..notify import Notifier
from ..runtime import Runtime, quiet_build
from .child import STATUS, Child, Inheritance, child_main

log = logging.getLogger("trio_tproxy.workers")

READY_TIMEOUT = 60.0  # a child that binds nothing new should be up in a second or two
RELOAD_TIMEOUT = 120.0  # each child builds the new runtime (the rule cache makes it quick)
STOP_MARGIN = 10.0  # after policy.grace, before a child that will not stop is killed
RESTART_BACKOFF = 1.0  # between restarts of a child that dies within FLAPPING of its start
FLAPPING = 1.0
STATUS_WORDS = {code: word for word, code in STATUS.items()}


def worker_count(setting: int | str) -> int:
    """``workers`` as a number: "auto" is one per core this process may run on."""
    if setting == "auto":
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except OSError:
            return max(1, os.cpu_count() or 1)
    return int(setting)


class Supervisor:
    def __init__(self, config_path: Path, runtime: Runtime, workers: int) -> None:
        self.config_path = config_path
        self.runtime = runtime
        self.workers = workers
        self.children: list[Child] = []
        self.firewall = AutoFirewall(None)
        self.notifier = Notifier()
        self.pid = os.getpid()
        self.hub_address = b"\0trio-tproxy-%d-%s" % (self.pid, secrets.token_hex(8).encode())
        self.hub_socket: socket.socket | None = None
        self.selector = selectors.DefaultSelector()
        self.signals: list[int] = []
        # children yet to reload, one at a time (the head is reloading): the others
        # keep relaying on a whole core meanwhile
        self.reload_queue: list[str] = []
        self.reload_failed: list[str] = []
        self.reload_deadline = 0.0
        self.reload_again = False
        self.wake = (-1, -1)  # the signal wakeup pipe

    # -- start ---------------------------------------------------------------------------

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit code. SocketSetupError / FirewallError
        propagate (``run`` prints them) after the children are gone."""
        cfg = self.runtime.config
        check_connection_budget(-(-cfg.policy.max_connections // self.workers),
                                raise_nofile_limit())  # fmt: skip
        from ..app import warn_at_start  # noqa: PLC0415 (app imports trio's whole stack)

        warn_at_start(self.runtime)
        self.firewall = AutoFirewall.prepare(cfg)
        self.wake = wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        old_handlers = self._install_signals(wake_w)
        try:
            self._bind(cfg)
            self.selector.register(wake_r, selectors.EVENT_READ, None)
            # what every child runs, imported once here: shared, not one copy per child
            from . import agent, hub  # noqa: F401, PLC0415
            gc.collect()
            gc.freeze()  # what is built is shared with the children, untouched by their GC
            for child in self.children:
                self._spawn(child)
            if not self._wait_ready():
                return 1
            self.firewall.apply()
            self.notifier.ready(f"{self.workers} worker(s)")
            log.info("ready: %d worker processes (%s) and a hub (pid %d); %s", self.workers,
                     ", ".join(f"{c.name} pid {c.pid}" for c in self.children[1:]),
                     self.children[0].pid, self._describe(cfg))  # fmt: skip
            self._loop(wake_r)
            return 0
        finally:
            self._stop_all()
            for child in self.children:
                child.listeners.close()
                if child.mailbox is not None:
                    child.mailbox.close()
            if self.hub_socket is not None:
                self.hub_socket.close()
            self.firewall.remove()
            signal.set_wakeup_fd(-1)
            for signum, handler in old_handlers.items():
                signal.signal(signum, handler)
            os.close(wake_r)
            os.close(wake_w)
            self.notifier.close()
            log.info("stopped")

    def _bind(self, cfg: Config) -> None:
        """Every socket, before any child exists: a port in use fails the start here.
        A first bind without SO_REUSEPORT finds a port someone else holds (with it,
        another process of ours could join the group and take half the traffic)."""
        Listeners.open(cfg, services=False).close()
        hub = Child("hub", Listeners.open(cfg, inbounds=False, services=True))
        self.children.append(hub)
        for i in range(1, self.workers + 1):
            mailbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            mailbox.bind(self.mailbox_address(f"w{i}"))
            mailbox.setblocking(False)
            self.children.append(Child(
                f"w{i}", Listeners.open(cfg, services=False, reuseport=True), mailbox=mailbox,
            ))  # fmt: skip
        self.hub_socket = sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(self.hub_address)
        sock.listen(64)

    def mailbox_address(self, name: str) -> bytes:
        return self.hub_address + b"-" + name.encode()

    def _describe(self, cfg: Config) -> str:
        """The workers' inbounds (each has the same) and the hub's services."""
        first = self.children[1].listeners if len(self.children) > 1 else Listeners()
        return ", ".join([
            *first.describe(), *self.children[0].listeners.describe(),
            *([f"controller API on {cfg.api.listen}"] if cfg.api is not None else []),
        ])  # fmt: skip

    def _install_signals(self, wake_w: int) -> dict[int, Callable[..., object] | int | None]:
        old: dict[int, Callable[..., object] | int | None] = {}

        def note(signum: int, frame: object) -> None:
            self.signals.append(signum)

        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            old[signum] = signal.signal(signum, note)
            signal.siginterrupt(signum, False)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        return old

    # -- children ------------------------------------------------------------------------

    def _spawn(self, child: Child) -> None:
        status_r, status_w = os.pipe2(os.O_CLOEXEC)
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(status_r)
            child_main(child, self._inheritance(), status_w)
        os.close(status_w)
        os.set_blocking(status_r, False)
        child.pid, child.status, child.started, child.ready = pid, status_r, time.monotonic(), False
        child.restart_at = None
        self.selector.register(status_r, selectors.EVENT_READ, child)

    def _inheritance(self) -> Inheritance:
        assert self.hub_socket is not None
        workers = [c for c in self.children if c.mailbox is not None]
        return Inheritance(
            config_path=self.config_path, runtime=self.runtime, parent=self.pid,
            hub_socket=self.hub_socket, hub_address=self.hub_address,
            mailboxes=tuple(self.mailbox_address(c.name) for c in workers), shed=self._shed,
        )  # fmt: skip

    def _shed(self, child: Child) -> None:
        """In a fresh child: close what is the supervisor's and the other slots'."""
        self.selector.close()
        for fd in self.wake:
            os.close(fd)
        for other in self.children:
            if other is not child:
                other.listeners.close()
                if other.mailbox is not None:
                    other.mailbox.close()
                if other.status >= 0:
                    os.close(other.status)

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(c.ready for c in self.children):
            if self.signals and any(s in (signal.SIGTERM, signal.SIGINT) for s in self.signals):
                log.info("stopping before every process was ready")
                return False
            events = self.selector.select(max(0.0, deadline - time.monotonic()))
            self._read_events(events)
            for child, pid, how in self._reap():
                log.error("%s (pid %d) %s while starting: see its lines above", child.name,
                          pid, how)  # fmt: skip
                return False
            if time.monotonic() > deadline:
                late = [c.name for c in self.children if not c.ready]
                log.error("not ready after %gs: %s", READY_TIMEOUT, ", ".join(late))
                return False
        return True

    def _read_events(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, _ in events:
            child = key.data
            if child is None:  # the signal wakeup pipe
                with contextlib.suppress(BlockingIOError):
                    while os.read(key.fd, 512):
                        pass
                continue
            try:
                data = os.read(key.fd, 512)
            except BlockingIOError:
                continue
            if not data:  # the child is gone; SIGCHLD tells the rest
                self.selector.unregister(key.fd)
                os.close(key.fd)
                child.status = -1
                continue
            for byte in data:
                self._on_status(child, STATUS_WORDS.get(bytes([byte]), "?"))

    def _on_status(self, child: Child, word: str) -> None:
        if word == "ready":
            child.ready = True
            child.quick_deaths = 0
        elif word in ("reloaded", "failed") and self.reload_queue[:1] == [child.name]:
            self.reload_queue.pop(0)
            if word == "failed":
                self.reload_failed.append(child.name)
            self._reload_progress()

    def _reap(self) -> list[tuple[Child, int, str]]:
        """The children that exited since the last look: the slot, the pid, and how."""
        gone: list[tuple[Child, int, str]] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            for child in self.children:
                if child.pid == pid:
                    child.pid = 0
                    gone.append((child, pid, _how(status)))
                    if child.status >= 0:
                        self.selector.unregister(child.status)
                        os.close(child.status)
                        child.status = -1
        return gone

    # -- serving -------------------------------------------------------------------------

    def _loop(self, wake_r: int) -> None:
        while True:
            timeout = 1.0
            now = time.monotonic()
            waiting = [c.restart_at for c in self.children if c.restart_at is not None]
            if waiting:
                timeout = max(0.0, min(waiting) - now)
            events = self.selector.select(timeout)
            self._read_events(events)
            for child, pid, how in self._reap():
                self._on_death(child, pid, how)
            now = time.monotonic()
            for child in self.children:
                if child.pid == 0 and child.restart_at is not None and child.restart_at <= now:
                    self._spawn(child)
                    if child.name in self.reload_queue:  # it starts on the new runtime
                        head = self.reload_queue[0] == child.name
                        self.reload_queue.remove(child.name)
                        if head:
                            self._reload_progress()
            if self.reload_queue and now > self.reload_deadline:
                name = self.reload_queue.pop(0)
                log.error("reload: no word from %s after %gs", name, RELOAD_TIMEOUT)
                self.reload_failed.append(name)
                self._reload_progress()
            signals, self.signals = self.signals, []
            for signum in signals:
                if signum in (signal.SIGTERM, signal.SIGINT):
                    return
                if signum == signal.SIGHUP:
                    if self.reload_queue:
                        self.reload_again = True  # coalesced: one more after this one
                    else:
                        self._reload()

    def _on_death(self, child: Child, pid: int, how: str) -> None:
        now = time.monotonic()
        quick = now - child.started < FLAPPING
        child.quick_deaths = child.quick_deaths + 1 if quick else 0
        delay = RESTART_BACKOFF if child.quick_deaths >= 3 else 0.0
        log.error("%s (pid %d) %s: its flows are lost; starting it again%s", child.name,
                  pid, how,
                  f" in {delay:g}s (it keeps dying at start)" if delay else "")  # fmt: skip
        child.restart_at = now + delay

    def _reload(self) -> None:
        self.notifier.reloading()
        log.info("reloading the configuration from %s", self.config_path)
        old = self.runtime
        try:
            runtime = self._build(old)
        except ConfigErrors as exc:
            log.error("reload rejected, keeping the running configuration:")
            for error in exc.errors:
                log.error("  %s", error)
            self.notifier.ready(f"{self.workers} worker(s)")
            return
        except Exception as exc:  # an unforeseen failure must not take the gateway down
            log.error("reload failed, keeping the running configuration: %r", exc)
            self.notifier.ready(f"{self.workers} worker(s)")
            return
        from ..app import warn_not_yet_in_effect, warn_restart_only  # noqa: PLC0415

        running = attrs.evolve(runtime.config, inbounds=old.config.inbounds)
        self.firewall.reload(running)
        warn_not_yet_in_effect(runtime.config)
        warn_restart_only(runtime.config, old.config)
        self.runtime = runtime  # the template for children started from now on
        del old
        gc.collect()
        gc.freeze()
        self.reload_failed = []
        self.reload_queue = [c.name for c in self.children if c.pid and c.ready]
        self._reload_progress()

    def _build(self, old: Runtime) -> Runtime:
        """The next runtime, built in a thread at a lower priority (the workers relay
        meanwhile); it writes the rule cache the children's own builds then read."""
        outcome: list[Runtime | BaseException] = []

        def build() -> None:
            try:
                with quiet_build():
                    outcome.append(Runtime.build(load_config(self.config_path),
                                                 router_cache=old.router_cache))  # fmt: skip
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=build, name="reload")
        thread.start()
        thread.join()
        if isinstance(outcome[0], BaseException):
            raise outcome[0]
        return outcome[0]

    def _reload_progress(self) -> None:
        """Signal the next child in the queue, or say how the reload went."""
        while self.reload_queue:
            child = next(c for c in self.children if c.name == self.reload_queue[0])
            if child.pid and child.ready:
                self.reload_deadline = time.monotonic() + RELOAD_TIMEOUT
                _kill(child.pid, signal.SIGHUP)
                return
            self.reload_queue.pop(0)  # gone meanwhile: it starts on the new runtime
        if self.reload_failed:
            log.error("configuration reloaded from %s except in %s (see their lines)",
                      self.config_path, ", ".join(self.reload_failed))  # fmt: skip
        else:
            log.info("configuration reloaded from %s", self.config_path)
        self.notifier.ready(f"{self.workers} worker(s)")
        if self.reload_again:
            self.reload_again = False
            self._reload()

    # -- stop ----------------------------------------------------------------------------

    def _stop_all(self) -> None:
        """SIGTERM to every child, then wait for them to drain; kill the late ones."""
        live = [c for c in self.children if c.pid]
        if not live:
            return
        grace = self.runtime.config.policy.grace.seconds
        self.notifier.stopping(f"{len(live)} process(es) draining")
        log.info("stopping: every worker drains its flows (policy.grace = %gs)", grace)
        for child in live:
            _kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace + STOP_MARGIN
        while any(c.pid for c in self.children) and time.monotonic() < deadline:
            self.selector.select(0.05)
            self._reap()
        for child in self.children:
            if child.pid:
                log.error("%s (pid %d) did not stop within %gs: killed", child.name, child.pid,
                          grace + STOP_MARGIN)  # fmt: skip
                _kill(child.pid, signal.SIGKILL)
        while any(c.pid for c in self.children):
            self.selector.select(0.05)
            self._reap()


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"was killed by {name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def _kill(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError as exc:
        if exc.errno != errno.ESRCH:
            raise

