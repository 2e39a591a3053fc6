"""A UDP service driven datagram by datagram, with fake outbounds and a fake reply path.

The service runs for real (its nursery, janitor, session tasks, routing through a real
Runtime); only the edges are fakes: datagrams are handed to ``on_datagram`` as the
receive loop would, links record what they send and can inject replies, and replies
to clients are recorded instead of sent from transparent sockets.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterator

import attrs
import pytest
import trio
import trio.testing

from trio_tproxy.addr import Endpoint
from trio_tproxy.config import parse_config_text
from trio_tproxy.outbound.base import DatagramSink, Destination, UdpRequest, Upstream
from trio_tproxy.runtime import Runtime
from trio_tproxy.udp.replies import ReplySockets
from trio_tproxy.udp.service import UdpService

BASE = """
[[inbounds]]
tag = "tp"
type = "tproxy"
port = 12345
network = ["udp"]
{sniffing}
[[outbounds]]
tag = "direct"
type = "direct"
[[outbounds]]
tag = "block"
type = "block"
[[outbounds]]
tag = "web"
type = "http"
server = "192.0.2.11:3128"
[policy]
{policy}
{extra}
"""

CLIENT: Endpoint = ("10.77.1.2", 40000)
SERVER: Endpoint = ("10.77.2.2", 9000)


class FakeLink:
    outcome: str | None = None

    def __init__(self, request: UdpRequest) -> None:
        self.request = request
        self.sent: list[tuple[bytes, Endpoint, str | None]] = []
        self.deliver: DatagramSink | None = None
        self.receiving = trio.Event()
        self.closed = False
        self.explode = False

    def send(self, payload: memoryview, dst: Endpoint, domain: str | None) -> str | None:
        if self.explode:
            raise RuntimeError("a bug in an outbound")
        self.sent.append((bytes(payload), dst, domain))
        return None

    def reply(self, payload: bytes, remote: Endpoint) -> None:
        assert self.deliver is not None
        self.deliver(memoryview(payload), remote)

    async def receive(self, deliver: DatagramSink) -> None:
        self.deliver = deliver
        self.receiving.set()
        await trio.sleep_forever()

    def close(self) -> None:
        self.closed = True


class FakeOutbound:
    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.links: list[FakeLink] = []
        self.gate: trio.Event | None = None  # open_udp waits for it when set
        self.failures: list[OSError] = []  # raised by the next open_udp calls

    async def open_stream(
        self,
        destination: Destination,
        *,
        timeout: float,  # noqa: ASYNC109
        initial: bytes = b"",
    ) -> Upstream:
        raise NotImplementedError  # UDP tests only

    async def open_udp(self, request: UdpRequest) -> FakeLink:
        if self.gate is not None:
            await self.gate.wait()
        if self.failures:
            raise self.failures.pop(0)
        link = FakeLink(request)
        self.links.append(link)
        return link


class FakeReplies(ReplySockets):
    sent: list[tuple[Endpoint, Endpoint, bytes]]

    def send(self, remote: Endpoint, client: Endpoint, payload: memoryview) -> str | None:
        self.sent.append((remote, client, bytes(payload)))
        return None


class RecordingService(UdpService):
    def _make_replies(self, nursery: trio.Nursery) -> ReplySockets:
        replies = FakeReplies(
            mark=0, buffer=self.buffer, limits=lambda: self.limits, counters=self.counters,
            on_client_datagram=self.on_datagram, nursery=nursery,
        )  # fmt: skip
        replies.sent = []
        return replies

    @property
    def replies(self) -> FakeReplies:
        assert isinstance(self._replies, FakeReplies)
        return self._replies


@attrs.define
class Harness:
    service: RecordingService
    runtime: Runtime
    direct: FakeOutbound
    sock: socket.socket

    def send(self, dst: Endpoint = SERVER, payload: bytes = b"ping",
             client: Endpoint = CLIENT) -> None:  # fmt: skip
        self.service.on_datagram(memoryview(payload), client, dst, False)

    async def settle(self) -> None:
        await trio.testing.wait_all_tasks_blocked()

    @property
    def counters(self):  # type: ignore[no-untyped-def]
        return self.service.counters


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")

    def matching(self, text: str) -> list[str]:
        return [line for line in self.lines if text in line]


@pytest.fixture
def logs() -> Iterator[Lines]:
    """Every log line of trio_tproxy (access log included), whatever propagation says."""
    handler = Lines()
    logger = logging.getLogger("trio_tproxy")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


@pytest.fixture
async def make_service(nursery: trio.Nursery) -> AsyncIterator[Callable[..., object]]:
    made: list[socket.socket] = []

    async def make(*, sniffing: str = "", policy: str = "", extra: str = "") -> Harness:
        rt = Runtime.build(parse_config_text(BASE.format(sniffing=sniffing, policy=policy,
                                                         extra=extra)))  # fmt: skip
        direct = FakeOutbound("direct")
        rt.outbounds["direct"] = direct  # type: ignore[assignment]
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        made.append(sock)
        service = RecordingService(rt.config.inbounds[0], sock, lambda: rt)
        await nursery.start(service.run)
        return Harness(service, rt, direct, sock)

    yield make
    for sock in made:
        sock.close()
