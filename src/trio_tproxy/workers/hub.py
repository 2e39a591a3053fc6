"""The hub process's side of the links to the worker processes.

The hub serves what there is one of in a gateway with workers: dns.listen, the
controller API and the group probes. Through the links it

* answers the API for every worker's flows (:class:`RemoteFlows`: the snapshot is the
  workers' snapshots together, totals and metrics add up, a close goes to all);
* tells every worker what it decides: the group state after each probe or selector
  change, the names its DNS listener answered (for the workers' reverse maps), the log
  level set through the API, and whether a dashboard is reading /logs (then the workers
  send their lines, which the hub's /logs shows as its own).

A worker's link is accepted on the unix socket the supervisor bound (and keeps across a
restart of the hub); the worker says who it is first. A worker that does not answer
within ``ASK_TIMEOUT`` is left out of that answer.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ..addr import IPAddress
from ..api import metrics
from ..api.flows import JsonObject, LocalFlows
from ..api.loghub import LEVELS
from ..logs import ROOT
from ..runtime import Runtime
from .link import Link, LinkError, Message

if TYPE_CHECKING:
    from ..app import Gateway

log = logging.getLogger("trio_tproxy.workers")

ASK_TIMEOUT = 2.0
WATCH_EVERY = 0.1  # the log level and the /logs subscribers, polled
SEND_BACKLOG = 10_000  # notices waiting for a slow worker; past that the link is reset


class WorkerLink:
    """One worker's link: requests by id, notices through a bounded queue."""

    def __init__(self, link: Link, name: str) -> None:
        self.link = link
        self.name = name
        self._next_id = 0
        self._waiting: dict[int, trio.MemorySendChannel[Message]] = {}
        self._out_send, self._out_receive = trio.open_memory_channel[Message](SEND_BACKLOG)

    def notify(self, message: Message) -> None:
        try:
            self._out_send.send_nowait(message)
        except trio.WouldBlock:
            log.warning("worker %s is not reading its link: resetting it", self.name)
            self._out_send.close()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def ask(self, op: str, **fields: object) -> Any:
        self._next_id += 1
        ident = self._next_id
        send, receive = trio.open_memory_channel[Message](1)
        self._waiting[ident] = send
        try:
            self.notify({"id": ident, "op": op, **fields})
            with trio.fail_after(ASK_TIMEOUT):
                answer = await receive.receive()
        finally:
            self._waiting.pop(ident, None)
        if "error" in answer:
            raise LinkError(f"worker {self.name}: {answer['error']}")
        return answer.get("result")

    async def run(self, on_line: Callable[[Message], None]) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._send_loop)
            try:
                while (message := await self.link.receive()) is not None:
                    ident = message.get("id")
                    if isinstance(ident, int) and ident in self._waiting:
                        self._waiting.pop(ident).send_nowait(message)
                    elif message.get("op") == "log":
                        on_line(message)
            finally:
                nursery.cancel_scope.cancel()

    async def _send_loop(self) -> None:
        async for message in self._out_receive:
            await self.link.send(message)
        raise trio.BrokenResourceError("notice queue overflowed")


class HubCompanion:
    def __init__(self, listener: socket.socket) -> None:
        self.listener = listener
        self.workers: dict[str, WorkerLink] = {}
        self._runtime: Runtime | None = None
        self._hooked: set[int] = set()

    # -- what the hub decides, passed on --------------------------------------------------

    def adopt(self, runtime: Runtime) -> None:
        self._runtime = runtime
        groups = runtime.groups
        groups.health.on_change = self._groups_changed
        groups.selections.on_change = self._groups_changed
        if runtime.dns.reverse is not None:
            runtime.dns.reverse.on_learn = self._learnt
        self._groups_changed()  # a reload may change the members

    def _group_notice(self) -> Message | None:
        if self._runtime is None:
            return None
        groups = self._runtime.groups
        return {"op": "groups", "health": groups.health.export(),
                "choices": dict(groups.selections.choices)}  # fmt: skip

    def _groups_changed(self) -> None:
        notice = self._group_notice()
        if notice is not None:
            self._broadcast(notice)

    def _learnt(self, name: str, addresses: list[IPAddress]) -> None:
        self._broadcast({"op": "reverse", "name": name, "addresses": [str(a) for a in addresses]})

    def _broadcast(self, message: Message) -> None:
        for worker in list(self.workers.values()):
            worker.notify(message)

    # -- the links ------------------------------------------------------------------------

    def flows(self, gateway: Gateway) -> RemoteFlows:
        return RemoteFlows(self, LocalFlows(lambda: gateway.runtime, gateway.udp_services))

    async def run(self, gateway: Gateway) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self.listener))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch, gateway)
            while True:
                stream = await listener.accept()
                nursery.start_soon(self._worker, stream, gateway)

    async def _worker(self, stream: trio.SocketStream, gateway: Gateway) -> None:
        link = Link(stream)
        try:
            if not _same_user(stream.socket):
                return
            hello = await link.receive()
            if hello is None or hello.get("op") != "hello":
                return
            name = str(hello.get("name"))
            worker = WorkerLink(link, name)
            self.workers[name] = worker
            log.debug("worker %s linked (pid %s)", name, hello.get("pid"))
            if (notice := self._group_notice()) is not None:
                worker.notify(notice)
            worker.notify({"op": "level", "level": logging.getLogger(ROOT).level})
            if (level := _logs_level(gateway)) is not None:
                worker.notify({"op": "logs", "level": level})
            try:
                await worker.run(lambda line: _publish(gateway, line))
            finally:
                if self.workers.get(name) is worker:
                    del self.workers[name]
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError, LinkError) as exc:
            log.debug("a worker link ended: %s", exc)
        finally:
            await link.aclose()

    async def _watch(self, gateway: Gateway) -> None:
        """Pass on the log level (PATCH /configs) and the /logs subscription."""
        level = logging.getLogger(ROOT).level
        logs = _logs_level(gateway)
        while True:
            await trio.sleep(WATCH_EVERY)
            now = logging.getLogger(ROOT).level
            if now != level:
                level = now
                self._broadcast({"op": "level", "level": level})
            wanted = _logs_level(gateway)
            if wanted != logs:
                logs = wanted
                self._broadcast({"op": "logs", "level": logs})

    async def ask_all(self, op: str, **fields: object) -> list[Any]:
        """Every linked worker's answer (those that fail or are late are left out)."""
        answers: list[Any] = []

        async def one(worker: WorkerLink) -> None:
            try:
                answers.append(await worker.ask(op, **fields))
            except (trio.TooSlowError, LinkError, trio.BrokenResourceError,
                    trio.ClosedResourceError) as exc:  # fmt: skip
                log.debug("worker %s left out of %s: %r", worker.name, op, exc)

        async with trio.open_nursery() as nursery:
            for worker in list(self.workers.values()):
                nursery.start_soon(one, worker)
        return answers


class RemoteFlows:
    """Every worker's flows, as the controller API sees one gateway's."""

    def __init__(self, hub: HubCompanion, local: LocalFlows) -> None:
        self._hub = hub
        self._local = local  # the hub's own counters (its DNS listener's lookups)

    async def connections(self) -> JsonObject:
        parts = await self._hub.ask_all("connections")
        return {
            "downloadTotal": sum(int(p["downloadTotal"]) for p in parts),
            "uploadTotal": sum(int(p["uploadTotal"]) for p in parts),
            "connections": [c for p in parts for c in p["connections"]],
            "memory": 0,
        }

    async def totals(self) -> tuple[int, int]:
        parts = await self._hub.ask_all("totals")
        return sum(int(p[0]) for p in parts), sum(int(p[1]) for p in parts)

    async def close(self, flow_id: str) -> bool:
        return any(await self._hub.ask_all("close", flow=flow_id))

    async def close_all(self) -> int:
        return sum(int(n) for n in await self._hub.ask_all("close_all"))

    async def metrics(self) -> metrics.Samples:
        own = await self._local.metrics()
        return metrics.merge([own, *await self._hub.ask_all("metrics")])

    async def memory(self) -> int:
        own = await self._local.memory()
        return own + sum(int(n) for n in await self._hub.ask_all("memory"))


def _logs_level(gateway: Gateway) -> float | None:
    controller = gateway.controller
    hub = controller.logs if controller is not None else None
    return hub.lowest_level() if hub is not None else None


def _publish(gateway: Gateway, line: Message) -> None:
    controller = gateway.controller
    if controller is not None and controller.logs is not None:
        kind = str(line.get("kind"))  # mihomo's level name, as the worker's LogHub made it
        payload = str(line.get("payload"))
        controller.logs.publish(int(LEVELS.get(kind, logging.INFO)), (kind, payload))


def _same_user(sock: trio.socket.SocketType) -> bool:
    """Only our own processes may link (the socket's name is abstract: any process in
    the network namespace could connect to it)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    if uid != os.getuid():
        log.warning("refused a link from uid %d on the workers' socket", uid)
        return False
    return True
