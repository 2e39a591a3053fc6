"""The ``dns.listen`` listener: plain DNS over UDP and TCP for LAN clients.

Each listen address gets a UDP socket and a TCP listener, both bound before the gateway
reports ready (a port in use is one clear error at start). Work is bounded: at most
:data:`MAX_UDP_INFLIGHT` UDP queries wait for upstreams at once (more are dropped; the
client retries) and at most :data:`MAX_TCP_CONNECTIONS` TCP clients are served, each
idle for at most :data:`TCP_IDLE` seconds (RFC 7766 section 6.2.3 asks for seconds).

Answers the cache or ``hosts`` can give are sent from the receive loop itself; only
queries that need an upstream get a task of their own (:mod:`.datagram`).
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from typing import Final

import trio

from ..config.values import HostPort
from ..inbound.listen import open_listening_socket
from ..inbound.sockopt import SocketSetupError
from ..sock import EMPTY, FULL, RECV_BATCH, Batch, close_socket, receive_batches
from .datagram import DatagramQueries
from .service import DnsService
from .stream import serve_dns_stream

log = logging.getLogger("trio_tproxy.dns.server")

__all__ = ["DnsListener", "open_dns_listener"]

MAX_UDP_INFLIGHT: Final = 1024
MAX_TCP_CONNECTIONS: Final = 256
TCP_IDLE: Final = 10.0
TCP_BACKLOG: Final = 128
# Largest DNS message (16-bit length); also the UDP receive size.
MAX_MESSAGE: Final = 65535

ServiceGetter = Callable[[], DnsService]


class DnsListener:
    def __init__(self, where: HostPort, udp: socket.socket, tcp: socket.socket) -> None:
        self.where = where
        # UDP on the plain socket: a cache hit is recvfrom, answer, sendto, without the
        # two scheduler round trips trio's socket methods add (a third of a hit's cost)
        self.udp = udp
        self.tcp = tcp  # a trio socket only while serving (bound before trio runs)

    def close(self) -> None:
        close_socket(self.udp)
        close_socket(self.tcp)

    async def serve(self, service: ServiceGetter) -> None:
        """Answer until cancelled (the reload-aware ``service`` is asked per query)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._serve_udp, service)
            nursery.start_soon(self._serve_tcp, service)

    def _reply(self, reply: bytes, peer: tuple[object, ...]) -> None:
        try:
            self.udp.sendto(reply, peer)
        except OSError as exc:  # a full send buffer or a vanished client: UDP may drop
            log.debug("dns: reply to %s dropped: %s", peer, exc)

    async def _serve_udp(self, service: ServiceGetter) -> None:
        sock = self.udp

        def overloaded(waiting: int) -> None:
            log.warning("dns: %d queries wait for upstreams; dropping more", waiting)

        async with trio.open_nursery() as nursery:
            queries = DatagramQueries[tuple[object, ...]](
                nursery, service, self._reply, limit=MAX_UDP_INFLIGHT, on_overload=overloaded
            )

            def read_batch() -> Batch | OSError:
                for _ in range(RECV_BATCH):
                    try:
                        data, peer = sock.recvfrom(MAX_MESSAGE)
                    except BlockingIOError:
                        return EMPTY
                    except OSError as exc:
                        return exc
                    queries.take(data, peer)
                return FULL

            def on_error(exc: OSError) -> None:  # ICMP errors of earlier replies
                log.debug("dns: UDP receive: %s", exc)

            await receive_batches(sock, read_batch, on_error)

    async def _serve_tcp(self, service: ServiceGetter) -> None:
        limit = trio.CapacityLimiter(MAX_TCP_CONNECTIONS)
        listener = trio.socket.from_stdlib_socket(self.tcp)

        async def client(conn: trio.socket.SocketType) -> None:
            async with limit:
                stream = trio.SocketStream(conn)
                try:
                    await serve_dns_stream(stream, b"", service, TCP_IDLE)
                except (trio.BrokenResourceError, OSError) as exc:
                    log.debug("dns: TCP client: %s", exc)
                finally:
                    await trio.aclose_forcefully(stream)

        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = await listener.accept()
                except OSError as exc:
                    if exc.errno in (errno.EMFILE, errno.ENFILE):
                        await trio.sleep(0.1)
                    continue
                nursery.start_soon(client, conn)


def open_dns_listener(where: HostPort) -> DnsListener:
    """Bind UDP and TCP on ``where``; failures become one clear SocketSetupError."""
    ip = where.ip
    if ip is None:
        raise SocketSetupError(errno.EINVAL, f"dns.listen {where}: not an IP address")

    def bind(sock_type: int) -> socket.socket:
        return open_listening_socket(ip, where.port, sock_type, owner="dns.listen",
                                     where=str(where), backlog=TCP_BACKLOG)  # fmt: skip

    udp = bind(socket.SOCK_DGRAM)
    try:
        tcp = bind(socket.SOCK_STREAM)
    except BaseException:
        udp.close()
        raise
    return DnsListener(where, udp, tcp)
