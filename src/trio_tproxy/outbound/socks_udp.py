"""SOCKS5 UDP ASSOCIATE (RFC 1928 §7): the socks outbound's UDP link, one association
per client source.

The UDP session table (udp/session.py) opens one link per client source and outbound
(``SocksOutbound.open_udp``), so each client source gets its own association: a TCP
control connection negotiated like a CONNECT but with command UDP ASSOCIATE, plus a UDP
socket connected to the relay the proxy answered (BND.ADDR:BND.PORT; an unspecified
BND.ADDR means the proxy's own address, as most servers intend). Every datagram carries
the RFC 1928 header with its real destination, so one association serves all of the
client's remotes (full cone towards the proxy), and each reply names its responder,
which the client is answered from.

The association lives exactly as long as its control connection (RFC 1928 §7): the
connection is watched for EOF and errors, and kept under TCP keepalive so a proxy that
vanished without a FIN is noticed; either ends the link, and the session opens a new
one for the next datagram. Fragments (FRAG != 0) are dropped: reassembly is optional in
the RFC and no common server sends them.
"""

from __future__ import annotations

import errno
import logging
import socket

import attrs
import trio

from ..addr import Endpoint, SockAddr, unmap
from ..dial import DialError
from ..inbound.sockopt import set_mark
from ..resolver import Resolver
from ..sock import (
    EMPTY,
    FULL,
    RECV_BATCH,
    Batch,
    addr_to_sockaddr,
    close_socket,
    family_of,
    receive_batches,
    sockaddr_to_addr,
)
from . import socks_proto as proto
from .base import DatagramSink
from .udp_map import ReplyMap, datagram_host

log = logging.getLogger("trio_tproxy.outbound.socks_udp")

# Keepalive on the control connection: probes after 30 s of silence, every 10 s, three
# misses -> the association is declared dead after about a minute.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 30, 10, 3


@attrs.define
class UdpCounters:
    sent: int = 0
    received: int = 0
    dropped: int = 0  # could not send (buffer full, ICMP error, unencodable target)
    fragments: int = 0  # FRAG != 0, dropped
    malformed: int = 0  # not a SOCKS5 UDP datagram, or from a name we never sent to


class SocksUdpLink:
    """One UDP ASSOCIATE, as a UdpLink (outbound/base.py)."""

    outcome: str | None = None

    def __init__(self, name: str, control: socket.socket, udp: socket.socket,
                 relay: SockAddr, buffer: bytearray) -> None:  # fmt: skip
        self.name = name  # "socks proxy HOST:PORT", for log lines
        self.control = control
        self.udp = udp
        self.relay = relay
        self.counters = UdpCounters()
        self.closed = False
        self._buffer = buffer
        # Datagrams sent by name (a sniffed domain): the proxy resolves it, and the
        # reply comes from an address the client never addressed; it is mapped back.
        self._replies = ReplyMap()

    @classmethod
    async def start(  # noqa: PLR0917
        cls, name: str, control: socket.socket, reply: proto.Reply, resolver: Resolver,
        mark: int, buffer: bytearray,
    ) -> SocksUdpLink:  # fmt: skip
        """The link over a control connection whose UDP ASSOCIATE just succeeded.

        Owns ``control`` from here on (closed on failure); DialError says what failed.
        """
        try:
            relay = await _relay_address(name, control, reply, resolver)
            _keep_alive(control)
            udp = socket.socket(family_of(relay[0]), socket.SOCK_DGRAM)
            try:
                udp.setblocking(False)
                set_mark(udp, mark)
                # Connected: the kernel drops datagrams from anyone but the relay.
                udp.connect(addr_to_sockaddr(relay, udp.family))
            except BaseException:
                udp.close()
                raise
        except BaseException as exc:
            close_socket(control)
            if isinstance(exc, OSError) and not isinstance(exc, DialError):
                reason = f"{name}: UDP relay socket: {exc.strerror or exc}"
                raise DialError(exc.errno or errno.EIO, reason) from exc
            raise
        return cls(name, control, udp, relay, buffer)

    def send(self, payload: memoryview, dst: Endpoint, domain: str | None) -> str | None:
        """One datagram to ``domain`` (ATYP 3, resolved by the proxy) or ``dst``."""
        if self.closed:
            return "association closed"
        host: proto.Host = datagram_host(dst, domain)
        self._replies.sent(dst, domain)
        try:
            self.udp.send(proto.encode_udp(host, dst[1], payload))
        except BlockingIOError:
            self.counters.dropped += 1
            return "send buffer full"
        except (OSError, ValueError) as exc:  # ICMP error from the relay, name too long
            self.counters.dropped += 1
            return str(exc) if isinstance(exc, ValueError) else exc.strerror or str(exc)
        self.counters.sent += 1
        return None

    async def receive(self, deliver: DatagramSink) -> None:
        """Deliver replies until :meth:`close`; raise DialError when the proxy ends the
        association (the session then opens a new one for the next datagram)."""
        ended: str | None = None
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal ended
                ended = await self._watch_control()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await self._receive(deliver)
            nursery.cancel_scope.cancel()
        if ended is not None and not self.closed:
            raise DialError(errno.ECONNRESET, f"{self.name}: {ended}")

    def close(self) -> None:
        self.closed = True
        close_socket(self.udp)
        close_socket(self.control)

    async def _watch_control(self) -> str | None:
        while True:
            if self.closed:  # close() may come before this task first runs
                return None
            try:
                await trio.lowlevel.wait_readable(self.control)
                data = self.control.recv(4096)
            except BlockingIOError:
                continue
            except (OSError, trio.ClosedResourceError) as exc:
                if self.control.fileno() < 0:  # close() while we waited
                    return None
                reason = exc.strerror if isinstance(exc, OSError) else None
                return f"the control connection broke: {reason or exc}"
            if not data:
                return "the proxy closed the control connection"
            # Nothing is defined on the control connection after the reply: ignore it.

    async def _receive(self, deliver: DatagramSink) -> None:
        udp, buffer, counters, parse = self.udp, self._buffer, self.counters, self._parse
        view = memoryview(buffer)

        def read_batch() -> Batch | OSError:
            for _ in range(RECV_BATCH):
                try:
                    size = udp.recv_into(buffer)
                except BlockingIOError:
                    return EMPTY
                except OSError as exc:
                    return exc
                parsed = parse(view[:size])
                if parsed is not None:
                    header, remote = parsed
                    counters.received += 1
                    deliver(view[header:size], remote)
            return FULL

        def on_error(exc: OSError) -> None:
            # An ICMP error for an earlier datagram (ECONNREFUSED): the relay may come
            # back; the control connection decides when we are done.
            log.debug("%s: relay %s: %s", self.name, self.relay, exc)

        await receive_batches(udp, read_batch, on_error)

    def _parse(self, datagram: memoryview) -> tuple[int, Endpoint] | None:
        try:
            frag, host, port, header = proto.parse_udp_header(datagram)
        except proto.SocksProtocolError as exc:
            self.counters.malformed += 1
            log.debug("%s: dropped a malformed datagram: %s", self.name, exc)
            return None
        if frag != 0:
            self.counters.fragments += 1
            log.debug("%s: dropped a fragment (FRAG %d)", self.name, frag)
            return None
        remote = self._replies.remote(host, port)
        if remote is None:
            self.counters.malformed += 1
            log.debug("%s: dropped a reply from %s, a name never sent to", self.name, host)
        return None if remote is None else (header, remote)


async def _relay_address(
    name: str, control: socket.socket, reply: proto.Reply, resolver: Resolver
) -> SockAddr:
    host = reply.host
    if isinstance(host, str):
        ips = await resolver.resolve(host)
        if not ips:
            raise DialError(errno.EHOSTUNREACH,
                            f"{name}: cannot resolve the UDP relay address {host!r}")  # fmt: skip
        host = ips[0]
    if host.is_unspecified:
        host = sockaddr_to_addr(control.getpeername())[0]
    return unmap(host), reply.port


def _keep_alive(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
