"""A worker process's side of its link to the hub (workers/hub.py).

The worker answers what the controller API asks of its flows (the snapshot, the byte
totals, the metrics, closing a flow) and takes what the hub decides for every worker:
the group probes' results and the selectors' choices (so every worker picks the same
member), the names its DNS listener answered (the reverse map: a client's flow may land
on any worker), the log level, and whether a dashboard wants the log lines.

The hub may be restarted by the supervisor: the worker then connects again, every
``RECONNECT`` seconds, and routes meanwhile with what it was last told.

Workers also pass each other the replies of upstream links that a firewall diverted into
the TPROXY listener (gost's "Playground" rules divert everything): the kernel hands such
a reply to whichever worker its hash picks, but only the worker whose link it answers
can deliver it. A worker that gets a datagram for an address of this gateway that none
of its links owns sends it to the other workers' mailboxes (unix datagram sockets the
supervisor bound); the owner delivers it, the others drop it.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import time
from collections import deque
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from ..addr import Endpoint
from ..api.flows import LocalFlows
from ..api.loghub import LogHub
from ..inbound.sockopt import is_local_address
from ..logs import ROOT
from ..outbound.udp_socket import port_owner
from ..runtime import Runtime
from .link import Link, LinkError, Message

if TYPE_CHECKING:
    from ..app import Gateway

log = logging.getLogger("trio_tproxy.workers")

RECONNECT = 0.2
LOCAL_TTL = 5.0  # seconds an answer of "is this an address of the gateway?" is kept
LOCAL_CACHE_SIZE = 4096
MAILBOX_SIZE = 65536 + 256  # a datagram and its addresses
OUTBOX_SIZE = 4096  # datagrams waiting for room in another worker's mailbox


class WorkerAgent:
    def __init__(
        self,
        address: bytes,
        name: str,
        mailbox: socket.socket | None = None,
        mailboxes: tuple[bytes, ...] = (),
        index: int = 0,
    ) -> None:
        self.address = address
        self.name = name
        self._forwarding: LogHub | None = None
        self._forward_scope = trio.CancelScope()
        self.mailbox = mailbox  # ours: the other workers send us their stray replies
        self.mailboxes = mailboxes  # every worker's, by index (ours too)
        self.index = index
        # to each other worker: a socket connected to its mailbox, and what waits for
        # room there (a unix datagram queue holds net.unix.max_dgram_qlen, 10 by default)
        self._outboxes: dict[int, tuple[socket.socket, deque[bytes]]] = {}
        self._nursery: trio.Nursery | None = None
        self.lost = 0
        self._local: dict[str, tuple[bool, float]] = {}
        self.forwarded = 0
        self.received = 0

    def adopt(self, runtime: Runtime) -> None:
        """The group state the hub's notices fill (a reload keeps it): the hub, which
        probes, is the one that logs the groups' changes."""
        runtime.groups.announces = False

    def flows(self, gateway: Gateway) -> None:
        return None  # the worker's own flows (the API lives in the hub)

    # -- replies diverted to the wrong worker ------------------------------------------------

    def forward_reply(
        self, inbound: str, dst: Endpoint, payload: memoryview, remote: Endpoint
    ) -> bool:
        """A diverted datagram none of our links owns: for an address of this gateway,
        on a port of another worker's share (outbound/udp_socket.py), it is that
        worker's to deliver (or to refuse as a loop): sent to its mailbox."""
        owner = port_owner(dst[1])
        if owner == self.index or owner >= len(self.mailboxes) or not self._is_local(dst[0]):
            return False
        message = f"{inbound} {dst[0]} {dst[1]} {remote[0]} {remote[1]}\n".encode() + payload
        self.forwarded += 1
        outbox = self._outbox(owner)
        if outbox is None:
            self.lost += 1
            return True
        sock, waiting = outbox
        if not waiting:
            try:
                sock.send(message)
            except BlockingIOError:
                pass
            except OSError:
                self.lost += 1
                return True
            else:
                return True
        if len(waiting) >= OUTBOX_SIZE:
            self.lost += 1  # the other worker is not reading: lost, as UDP may be
            return True
        waiting.append(message)
        if len(waiting) == 1 and self._nursery is not None:
            self._nursery.start_soon(self._flush, sock, waiting)
        return True

    def _outbox(self, owner: int) -> tuple[socket.socket, deque[bytes]] | None:
        outbox = self._outboxes.get(owner)
        if outbox is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                sock.connect(self.mailboxes[owner])  # connected: poll waits for room
            except OSError as exc:
                sock.close()
                log.debug("mailbox of worker %d: %s", owner + 1, exc)
                return None
            outbox = self._outboxes[owner] = (sock, deque())
        return outbox

    async def _flush(self, sock: socket.socket, waiting: deque[bytes]) -> None:
        while waiting:
            try:
                sock.send(waiting[0])
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            except OSError:
                self.lost += 1
            waiting.popleft()

    def _is_local(self, host: str) -> bool:
        now = time.monotonic()
        known = self._local.get(host)
        if known is not None and known[1] > now:
            return known[0]
        try:
            local = is_local_address(ipaddress.ip_address(host))
        except (OSError, ValueError):
            local = False
        if len(self._local) >= LOCAL_CACHE_SIZE:
            self._local.clear()
        self._local[host] = (local, now + LOCAL_TTL)
        return local

    async def _receive_replies(self, gateway: Gateway) -> None:
        """What the other workers pass us: replies for our links, or (none owns it) a
        datagram to this gateway that our inbound refuses as a loop, as one process would."""
        mailbox = self.mailbox
        assert mailbox is not None
        while True:
            await trio.lowlevel.wait_readable(mailbox)
            while True:
                try:
                    message = mailbox.recv(MAILBOX_SIZE)
                except BlockingIOError:
                    break
                except OSError as exc:
                    log.debug("mailbox: %s", exc)
                    break
                head, _, payload = message.partition(b"\n")
                try:
                    tag, dst_host, dst_port, remote_host, remote_port = head.decode().split(" ")
                    dst, remote = (dst_host, int(dst_port)), (remote_host, int(remote_port))
                except ValueError:
                    continue  # only our workers can write here; a bad one is dropped
                self.received += 1
                for udp in gateway.udp_services:
                    if udp.inbound.tag == tag:  # our links first, else the loop refusal
                        udp.on_datagram(memoryview(payload), remote, dst, False)

    async def run(self, gateway: Gateway) -> None:
        if len(self.mailboxes) > 1:
            for udp in gateway.udp_services:
                udp.forward_foreign_reply = partial(self.forward_reply, udp.inbound.tag)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            if self.mailbox is not None:
                nursery.start_soon(self._receive_replies, gateway)
            await self._link_to_hub(gateway)

    async def _link_to_hub(self, gateway: Gateway) -> None:
        while True:
            try:
                sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                await sock.connect(self.address)
            except OSError as exc:
                sock.close()
                log.debug("hub not reachable (%s): trying again", exc)
                await trio.sleep(RECONNECT)
                continue
            link = Link(trio.SocketStream(sock))
            try:
                await link.send({"op": "hello", "name": self.name, "pid": os.getpid()})
                async with trio.open_nursery() as nursery:
                    await self._serve(link, gateway, nursery)
                    nursery.cancel_scope.cancel()
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, LinkError) as exc:
                log.debug("link to the hub lost (%s): connecting again", exc)
            finally:
                self._stop_forwarding()
                await link.aclose()
            await trio.sleep(RECONNECT)

    async def _serve(self, link: Link, gateway: Gateway, nursery: trio.Nursery) -> None:
        local = LocalFlows(lambda: gateway.runtime, gateway.udp_services)
        while (message := await link.receive()) is not None:
            op = message.get("op")
            if "id" in message:
                try:
                    answer: Message = {"id": message["id"],
                                       "result": await self._answer(local, op, message)}
                except Exception as exc:  # a bug or a bad request: this answer, not the link
                    log.exception("hub request %r failed", op)
                    answer = {"id": message["id"], "error": repr(exc)}
                await link.send(answer)
            else:
                self._notice(gateway, op, message, link, nursery)

    async def _answer(self, local: LocalFlows, op: Any, message: Message) -> object:
        if op == "connections":
            return await local.connections()
        if op == "totals":
            return list(await local.totals())
        if op == "metrics":
            return await local.metrics()
        if op == "memory":
            return await local.memory()
        if op == "close":
            return await local.close(str(message.get("flow", "")))
        if op == "close_all":
            return await local.close_all()
        raise ValueError(f"unknown request {op!r}")

    def _notice(
        self, gateway: Gateway, op: Any, message: Message, link: Link, nursery: trio.Nursery
    ) -> None:
        rt = gateway.runtime
        if op == "groups":
            rt.groups.health.replace(message["health"])
            rt.groups.selections.adopt(message["choices"])
        elif op == "reverse":
            if rt.dns.reverse is not None:
                addresses = [ipaddress.ip_address(a) for a in message["addresses"]]
                rt.dns.reverse.learn(str(message["name"]), addresses)
        elif op == "level":
            logging.getLogger(ROOT).setLevel(int(message["level"]))
        elif op == "logs":
            self._stop_forwarding()
            if message.get("level") is not None:
                nursery.start_soon(self._forward_logs, link, float(message["level"]))
        else:
            log.debug("unknown notice %r from the hub", op)

    async def _forward_logs(self, link: Link, level: float) -> None:
        """While a dashboard watches /logs: this worker's lines go to the hub."""
        hub = LogHub()
        root = logging.getLogger(ROOT)
        root.addHandler(hub)
        self._forwarding = hub
        lines = hub.subscribe(level)
        with self._forward_scope:
            try:
                async for kind, payload in lines:
                    await link.send({"op": "log", "kind": kind, "payload": payload})
            finally:
                root.removeHandler(hub)

    def _stop_forwarding(self) -> None:
        self._forward_scope.cancel()
        self._forward_scope = trio.CancelScope()
        if self._forwarding is not None:
            logging.getLogger(ROOT).removeHandler(self._forwarding)
            self._forwarding = None

