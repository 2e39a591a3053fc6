"""A forked child of the supervisor (workers/supervisor.py): the hub or a worker.

The supervisor keeps one :class:`Child` per slot (its sockets, the process serving it
now) and forks :func:`child_main` into it. The child sheds what belongs to the
supervisor and the other slots, follows its parent's death, names itself, and serves
its part of the gateway with app.Gateway on its slot's sockets; it tells the supervisor
how it goes on its status pipe, one byte a word (:data:`STATUS`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import attrs

from ..listeners import Listeners
from ..runtime import Runtime

log = logging.getLogger("trio_tproxy.workers")

STATUS = {"ready": b"R", "reloaded": b"L", "failed": b"F"}  # a child's word -> its byte
CHILD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")  # the supervisor's to use
PR_SET_PDEATHSIG = 1  # prctl(2)


@attrs.define(eq=False)
class Child:
    """One slot: the hub or a worker, its sockets, and the process serving it now."""

    name: str
    listeners: Listeners
    mailbox: socket.socket | None = None  # a worker's: the others pass it stray replies
    pid: int = 0
    status: int = -1  # read end of the child's status pipe
    started: float = 0.0
    ready: bool = False
    quick_deaths: int = 0  # deaths within FLAPPING of the start, in a row
    restart_at: float | None = None  # when a dead child is to be started again


@attrs.frozen
class Inheritance:
    """What a child takes from the supervisor at the fork."""

    config_path: Path
    runtime: Runtime
    parent: int  # the supervisor's pid
    hub_socket: socket.socket  # where workers link to the hub (the hub accepts on it)
    hub_address: bytes
    mailboxes: tuple[bytes, ...]  # every worker's, in order
    shed: Callable[[Child], None]  # closes what belongs to the supervisor and the others


def child_main(child: Child, inherited: Inheritance, status_w: int) -> NoReturn:
    """Serve ``child``'s part until it ends, then exit: never returns into the
    supervisor's stack, whatever happens."""
    code = 1
    try:
        code = _serve(child, inherited, status_w)
    except BaseException:
        with contextlib.suppress(Exception):
            log.exception("%s: failed", child.name)
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
            sys.stdout.flush()
        os._exit(code)


def _serve(child: Child, inherited: Inheritance, status_w: int) -> int:
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the loop listens for it
    _follow_parent(inherited.parent)
    inherited.shed(child)
    for name in CHILD_ENV:
        os.environ.pop(name, None)
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(f"trio-tproxy-{child.name}"[:15])

    import trio  # noqa: PLC0415

    from ..app import Gateway, Part  # noqa: PLC0415
    from ..logs import tag_logging  # noqa: PLC0415
    from ..outbound.udp_socket import share_ports  # noqa: PLC0415
    from .agent import WorkerAgent  # noqa: PLC0415
    from .hub import HubCompanion  # noqa: PLC0415

    tag_logging(child.name)
    workers = len(inherited.mailboxes)
    companion: WorkerAgent | HubCompanion
    if child.mailbox is None:  # the hub
        part = Part(name=child.name, workers=workers, inbounds=False, services=True,
                    leader=False)  # fmt: skip
        companion = HubCompanion(inherited.hub_socket)
    else:
        inherited.hub_socket.close()
        part = Part(name=child.name, workers=workers, inbounds=True, services=False,
                    leader=False)  # fmt: skip
        index = int(child.name.removeprefix("w")) - 1
        share_ports(index, workers)  # before the first upstream socket is bound
        companion = WorkerAgent(inherited.hub_address, child.name, child.mailbox,
                                inherited.mailboxes, index=index)  # fmt: skip

    def report(word: str) -> None:
        with contextlib.suppress(OSError):
            os.write(status_w, STATUS[word])

    gateway = Gateway(inherited.config_path, inherited.runtime, part=part,
                      listeners=child.listeners, companion=companion, report=report)  # fmt: skip
    trio.run(gateway.serve)
    return 0


def _follow_parent(parent: int) -> None:
    """SIGTERM for this child when the supervisor dies (killed, out of memory): it
    drains and exits instead of serving on unsupervised."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)
