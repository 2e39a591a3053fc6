"""The ``shadowsocks`` outbound's UDP link: one client session's datagrams through the
server (shadowsocks.py opens it).

One socket per client session, connected to the server; every datagram is sealed on
its own (SIP004: a fresh salt; SIP022: the session id and a packet counter, replies
checked against a replay window per server session; shadowsocks_packet.py). A datagram
that would not fit in one UDP packet after the overhead is dropped and counted, never
fragmented. Replies are mapped back to the flow's remote address (udp_map.py).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Protocol

import attrs
import trio

from ..addr import Endpoint
from ..sock import close_socket
from . import shadowsocks_packet as packets
from . import shadowsocks_proto as proto
from .base import DatagramSink
from .socks_proto import Host
from .udp_map import ReplyMap, datagram_host

log = logging.getLogger("trio_tproxy.outbound.shadowsocks")

# The largest UDP payload one IPv4 packet carries (65535 - IP and UDP headers).
MAX_DATAGRAM = 65507
RECV_BATCH = 64
# Server sessions (SIP022 UDP) whose replay windows are kept per link.
MAX_SERVER_SESSIONS = 16


class ServerKey(Protocol):
    """What a link needs of its outbound (shadowsocks.ShadowsocksOutbound)."""

    name: str
    method: str
    key: bytes
    v2022: bool

    def prove(self) -> None: ...  # a reply decrypted: the key is right


@attrs.define
class UdpCounters:
    sent: int = 0
    received: int = 0
    dropped: int = 0  # could not send (buffer full, ICMP error, unencodable target)
    oversize: int = 0  # over one UDP packet after the overhead: dropped
    malformed: int = 0  # failed authentication, replayed, stale, or a name never sent to


class ShadowsocksUdpLink:
    """One client session's datagrams through the server, as a UdpLink."""

    outcome: str | None = None

    def __init__(self, outbound: ServerKey, sock: socket.socket,
                 buffer: bytearray) -> None:  # fmt: skip
        self._ob = outbound
        self.sock = sock
        self.counters = UdpCounters()
        self.closed = False
        self._buffer = buffer
        self._map = ReplyMap()
        # SIP022: our session id and packet counter; a replay window per server session.
        self._session_id = os.urandom(8)
        self._packet_id = 0
        self._windows: dict[bytes, packets.ReplayWindow] = {}

    def _seal(self, host: Host, port: int, payload: bytes) -> bytes:
        ob = self._ob
        if not ob.v2022:
            return packets.udp_seal(ob.method, ob.key, host, port, payload)
        packet_id = self._packet_id
        self._packet_id += 1
        return packets.udp2022_seal(ob.method, ob.key, self._session_id, packet_id, host, port,
                                  payload)  # fmt: skip

    def send(self, payload: memoryview, dst: Endpoint, domain: str | None) -> str | None:
        if self.closed:
            return "link closed"
        host: Host = datagram_host(dst, domain)
        try:
            packet = self._seal(host, dst[1], bytes(payload))
        except ValueError as exc:  # a name over 255 bytes
            self.counters.dropped += 1
            return str(exc)
        if len(packet) > MAX_DATAGRAM:
            self.counters.oversize += 1
            return (f"{len(payload)}-byte datagram is {len(packet)} bytes sealed, over one "
                    f"UDP packet ({MAX_DATAGRAM}): dropped")  # fmt: skip
        self._map.sent(dst, domain)
        try:
            self.sock.send(packet)
        except BlockingIOError:
            self.counters.dropped += 1
            return "send buffer full"
        except OSError as exc:  # an ICMP error from the server for an earlier datagram
            self.counters.dropped += 1
            return exc.strerror or str(exc)
        self.counters.sent += 1
        return None

    def _open(self, packet: bytes) -> tuple[Host, int, bytes]:
        ob = self._ob
        if not ob.v2022:
            return packets.udp_open(ob.method, ob.key, packet)
        opened = packets.udp2022_open(ob.method, ob.key, packet, from_server=True)
        if opened.client_session_id != self._session_id:
            raise proto.ShadowsocksError("reply for another client session")
        window = self._windows.get(opened.session_id)
        if window is None:
            if len(self._windows) >= MAX_SERVER_SESSIONS:
                self._windows.pop(next(iter(self._windows)))
            window = self._windows[opened.session_id] = packets.ReplayWindow()
        if not window.accept(opened.packet_id):
            raise proto.ShadowsocksError(f"replayed or too old packet id {opened.packet_id}")
        return opened.host, opened.port, opened.payload

    async def receive(self, deliver: DatagramSink) -> None:
        sock, buffer = self.sock, self._buffer
        view = memoryview(buffer)
        while not self.closed:
            for _ in range(RECV_BATCH):
                try:
                    size = sock.recv_into(buffer)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if self.closed or sock.fileno() < 0:
                        return
                    log.debug("%s: UDP: %s", self._ob.name, exc)  # ICMP for an earlier send
                    break
                try:
                    host, port, payload = self._open(bytes(view[:size]))
                except proto.ShadowsocksError as exc:
                    self.counters.malformed += 1
                    log.debug("%s: dropped a UDP reply: %s", self._ob.name, exc)
                    continue
                remote = self._map.remote(host, port)
                if remote is None:
                    self.counters.malformed += 1
                    continue
                self._ob.prove()
                self.counters.received += 1
                deliver(memoryview(payload), remote)
            else:
                await trio.lowlevel.checkpoint()  # a flood must not starve the rest
                continue
            try:
                await trio.lowlevel.wait_readable(sock)
            except (trio.ClosedResourceError, OSError):
                return

    def close(self) -> None:
        self.closed = True
        close_socket(self.sock)


__all__ = ["ShadowsocksUdpLink"]
