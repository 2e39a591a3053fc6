"""One UDP inbound: its listener, session table, reply sockets and timers.

Lifetimes (app.py owns the tree): the service runs in the gateway's flows nursery and
owns one nursery of its own for the listener loop, the reply-socket readers, every
session's tasks and the janitor. ``drain()`` (SIGTERM) closes the listener, refuses new
sessions and shortens the idle timeout to ``DRAIN_IDLE``; ``run`` returns once the
table is empty, or is cancelled at the gateway's grace deadline.

The table: sessions in least-recently-active order (``udp/lru.py``). Every datagram,
either direction, moves its session to the end, so the janitor only ever looks at the
head: it sleeps until the oldest session's deadline, ends what is due, and sleeps
again. A new client source in a full table evicts the least recently active session.
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Callable

import trio

from ..addr import Endpoint
from ..config import Inbound
from ..inbound import gso
from ..inbound.udp import DATAGRAM_BUFFER, receive_datagrams
from ..limits import DRAIN_IDLE, UdpCounters, UdpLimits, check_fd_budget
from ..outbound.udp_socket import deliver_own_reply
from ..runtime import Runtime
from ..sock import close_socket
from .lru import IdleLru
from .replies import ReplySockets
from .session import SessionEnv, UdpSession

log = logging.getLogger("trio_tproxy.udp.service")

# Internal errors on the per-datagram path are logged with a traceback this often at
# most: a bug hit by every packet must not become a log flood.
ERROR_LOG_INTERVAL = 10.0


class UdpService:
    def __init__(self, inbound: Inbound, sock: socket.socket, runtime: Callable[[], Runtime]):
        self.inbound = inbound
        self.sock = sock
        self._runtime = runtime
        self.counters = UdpCounters()
        self.buffer = bytearray(DATAGRAM_BUFFER)
        self.sessions: IdleLru[Endpoint, UdpSession] = IdleLru()
        self.draining = False
        self._env: SessionEnv | None = None
        self._replies: ReplySockets | None = None
        self._wake = trio.Event()
        self._warned: set[str] = set()
        self._over_limit = False
        self._error_logged_at = -math.inf
        # With worker processes: passes a diverted reply that none of our links own to
        # the other workers (one of them owns it); True when it did (workers/agent.py).
        self.forward_foreign_reply: Callable[[Endpoint, memoryview, Endpoint], bool] | None = None

    @property
    def limits(self) -> UdpLimits:
        return self._runtime().udp_limits

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ended = "stopped"
        try:
            async with trio.open_nursery() as nursery:
                self._replies = self._make_replies(nursery)
                self._env = SessionEnv(
                    self.inbound, nursery, self.counters, self.buffer, self._replies,
                    self.touch, self.warn_once, self.end_session,
                )  # fmt: skip
                nursery.start_soon(receive_datagrams, self.sock, self.buffer, self.on_datagram)
                check_fd_budget(self.inbound.tag, self.limits)
                task_status.started()
                await self._janitor()
                nursery.cancel_scope.cancel()
        except BaseException:
            # Cut short: the drain deadline (trio's Cancelled, maybe in a group) or a
            # crash. The sessions still open did not end on their own: say so.
            ended = "cancelled"
            raise
        finally:
            self._close_all(ended)
            log.info("udp %s: %s; %d datagrams left in GSO bursts", self.inbound.tag,
                     self.counters.summary(), gso.stats.coalesced)  # fmt: skip

    def _make_replies(self, nursery: trio.Nursery) -> ReplySockets:
        return ReplySockets(
            mark=self.inbound.mark, buffer=self.buffer, limits=lambda: self.limits,
            counters=self.counters, on_client_datagram=self.on_datagram, nursery=nursery,
        )  # fmt: skip

    def drain(self) -> None:
        """No new sessions; idle ones end after DRAIN_IDLE; run() returns when none is left."""
        self.draining = True
        self.close_listener()
        self._wake.set()

    def close_listener(self) -> None:
        close_socket(self.sock)

    # -- the per-datagram entry point (listener and reply sockets) ---------------------

    def on_datagram(
        self, payload: memoryview, client: Endpoint, dst: Endpoint | None, truncated: bool
    ) -> None:
        counters = self.counters
        if dst is None or truncated:
            # no original destination: not a TPROXY'd datagram (someone sent to our port)
            counters.dropped += 1
            return
        try:
            if deliver_own_reply(dst, payload, client):  # see outbound/udp_socket.py
                counters.own_replies += 1
                return
            forward = self.forward_foreign_reply
            if forward is not None and forward(dst, payload, client):
                return  # the worker it went to counts it, as it would have here
            counters.datagrams_up += 1
            counters.bytes_up += len(payload)
            if not payload:
                counters.empty += 1
            now = trio.current_time()
            sessions = self.sessions
            session = sessions.get(client)
            if session is None:
                if self.draining:
                    counters.dropped += 1
                    return
                session = self._new_session(client, now)
            else:  # IdleLru.touch, inlined: this runs for every datagram
                session.last = now
                sessions.move_to_end(client)
            session.from_client(payload, dst, now)
        except Exception:
            counters.dropped += 1
            self._internal_error(client, dst)

    def _new_session(self, client: Endpoint, now: float) -> UdpSession:
        assert self._env is not None
        limit = self.limits.max_sessions
        while len(self.sessions) >= limit:
            oldest = self.sessions.pop_oldest()
            if oldest is None:
                break
            if not self._over_limit:
                log.warning(
                    "udp %s: session limit reached (policy.max_udp_sessions = %d): the least "
                    "recently active sessions make room for new ones", self.inbound.tag, limit,
                )  # fmt: skip
                self._over_limit = True
            self.counters.evicted += 1
            oldest[1].finish("evicted (session limit)")
        session = UdpSession(self._env, self._runtime(), client, now)
        if not self.sessions:
            self._wake.set()  # the janitor sleeps without a deadline while the table is empty
        self.sessions.add(client, session, now)
        self.counters.sessions += 1
        return session

    def touch(self, session: UdpSession, now: float) -> None:
        if not session.closed:
            self.sessions.touch(session.client, session, now)

    def end_session(self, session: UdpSession, why: str) -> None:
        if self.sessions.get(session.client) is session:
            del self.sessions[session.client]
        session.finish(why)

    def warn_once(self, key: str, message: str) -> None:
        if key not in self._warned and len(self._warned) < 1024:
            self._warned.add(key)
            log.warning("udp %s: %s", self.inbound.tag, message)

    def _internal_error(self, client: Endpoint, dst: Endpoint) -> None:
        now = trio.current_time()
        if now - self._error_logged_at >= ERROR_LOG_INTERVAL:
            self._error_logged_at = now
            log.exception("udp %s: internal error on a datagram %s -> %s",
                          self.inbound.tag, client, dst)  # fmt: skip

    # -- timers ------------------------------------------------------------------------

    async def _janitor(self) -> None:
        while True:
            limits = self.limits
            idle = min(limits.idle, DRAIN_IDLE) if self.draining else limits.idle
            now = trio.current_time()
            for _, session in self.sessions.pop_idle(now, idle):
                self.counters.expired += 1
                session.finish("idle timeout")
            assert self._replies is not None
            self._replies.expire(now, limits.idle)
            if self._over_limit and len(self.sessions) < limits.max_sessions * 0.9:
                self._over_limit = False
            if self.draining and not self.sessions:
                return
            due = [
                t for t in (self.sessions.next_expiry(idle), self._replies.next_expiry(limits.idle))
                if t is not None
            ]  # fmt: skip
            self._wake = trio.Event()
            with trio.move_on_at(min(due, default=math.inf)):
                await self._wake.wait()

    def _close_all(self, ended: str) -> None:
        while (oldest := self.sessions.pop_oldest()) is not None:
            oldest[1].finish(ended)
        if self._replies is not None:
            self._replies.close()
        close_socket(self.sock)
