"""The ``dns`` outbound: DNS flows that routing hijacked (port 53) are answered here.

As v2ray's dns outbound (reference section 4): A/AAAA questions are answered by the
built-in splitter (same ID, QR=1 RD=1 RA=1, the question echoed), other types are
forwarded to the server the splitter would choose for the name (v2ray forwards them
to the flow's destination; here they follow the split, so a hijacked TXT query for a
foreign name does not leak to the domestic resolver), malformed ones get FORMERR.

TCP carries 2-byte length-prefixed messages (RFC 1035 4.2.2), several per connection;
the flow ends at the client's EOF or after ``policy.conn_idle`` without a query. UDP:
each datagram is one query; the reply goes back from the address the client asked
(the UDP session table sends it), cache hits at once, others from a task of their own,
at most :data:`MAX_PENDING` per client source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from ..addr import Endpoint
from ..config import DnsOutbound as DnsConfig
from ..dial import DialError
from ..dns.datagram import DatagramQueries
from ..dns.stream import serve_dns_stream
from ..upstreams import ClientStream
from .base import DatagramSink, Destination, LocalAnswer, UdpLink, UdpRequest

if TYPE_CHECKING:
    from ..dns.service import DnsService

log = logging.getLogger("trio_tproxy.outbound.dns")

# Queries of one client source waiting for upstreams; more are dropped (the client's
# resolver retries), so a flood from one host cannot queue without bound.
MAX_PENDING = 64


class DnsOutbound:
    def __init__(self, cfg: DnsConfig, resolver: object = None) -> None:
        self.tag: str = cfg.tag
        self.kind = cfg.TYPE
        self.local_only = True  # answers in process: DNS servers cannot be asked through it
        self.service: DnsService | None = None

    def attach(self, service: DnsService) -> None:
        """The runtime's splitter (built after the outbounds, which it dials through)."""
        self.service = service

    def _service(self) -> DnsService:
        if self.service is None:
            raise DialError(0, f"outbound {self.tag!r}: no DNS service attached")
        return self.service

    async def open_stream(
        self,
        destination: Destination,
        *,
        timeout: float,  # noqa: ASYNC109
        initial: bytes = b"",
    ) -> LocalAnswer:
        """No upstream: the session hands the client to :meth:`serve` (with ``initial``
        as the bytes already read)."""
        self._service()  # fail now, before the client is handed over
        await trio.lowlevel.checkpoint()
        return LocalAnswer(self.serve, chain=(self.tag,))

    async def serve(
        self, client: ClientStream, prefix: bytes, idle: float, count: Callable[[int, int], None]
    ) -> str:
        service = self._service()
        try:
            answered = await serve_dns_stream(client, prefix, lambda: service, idle, count)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            return f"dns: client error: {exc}"
        return f"dns: {answered} answered"

    async def open_udp(self, request: UdpRequest) -> UdpLink:
        await trio.lowlevel.checkpoint()
        return DnsLink(self._service())


class DnsLink:
    """One client source's DNS datagrams, answered by the splitter."""

    outcome: str | None = None

    def __init__(self, service: DnsService) -> None:
        self._service = service
        self._send, self._queries = trio.open_memory_channel[tuple[bytes, Endpoint]](MAX_PENDING)

    def send(self, payload: memoryview, dst: Endpoint, domain: str | None) -> str | None:
        try:
            self._send.send_nowait((bytes(payload), dst))
        except trio.WouldBlock:
            return f"dns: {MAX_PENDING} queries already wait for upstreams"
        except trio.ClosedResourceError:
            return "dns: link closed"
        return None

    async def receive(self, deliver: DatagramSink) -> None:
        service = self._service

        def reply(answer: bytes, dst: Endpoint) -> None:
            deliver(memoryview(answer), dst)

        async with trio.open_nursery() as nursery:
            queries = DatagramQueries[Endpoint](nursery, lambda: service, reply, limit=MAX_PENDING)
            async for data, dst in self._queries:
                queries.take(data, dst)

    def close(self) -> None:
        self._send.close()
