"""Upstream UDP sockets: marked, bound to a concrete local address, one per link.

Why a concrete address and never the wildcard: some rulesets let packets for existing
sockets through before diverting the rest, and tell "ours" by ``socket wildcard 0``
(hysteria's documented nftables table does). A reply from the remote to a socket bound
to 0.0.0.0 does not pass that test, gets TPROXY'd back into our own listener, and a
flow becomes a loop. Bound to the address the route to the first destination would
use, the socket is found, and its replies are delivered to it.

Some rulesets divert those replies all the same: TPROXY's socket lookup only takes a
*connected* UDP socket as the packet's owner, so behind rules that send every UDP packet
to TPROXY with no "local destination: return" (gost's transparent-proxy guide) a reply
to our unconnected socket lands on the TPROXY listener, addressed to the socket's own
address:port. Each link registers that address while it receives; the listener hands
such a datagram to :func:`deliver_own_reply` and so full cone works behind them too.

The address comes from the kernel itself: ``connect()`` on a UDP socket sends nothing
but runs the route lookup (with our SO_MARK, so policy routing by mark is honoured),
and ``getsockname()`` then tells the chosen source. The answer is cached briefly:
sessions to the same remote (a DNS server, a game server) come in bursts.
"""

from __future__ import annotations

import errno
import random
import socket
import time
from typing import Final

from ..addr import Endpoint
from ..addr import show as show_addr
from ..dial import DialError
from ..inbound import gso
from ..inbound.sockopt import set_mark
from ..inbound.udp import RCVBUF, set_buffer
from ..sock import EMPTY, FULL, RECV_BATCH, Batch, close_socket, receive_batches
from .base import DatagramSink

ROUTE_CACHE_TTL: Final = 5.0  # seconds; a route change is seen by new links this fast
ROUTE_CACHE_SIZE: Final = 1024
# The send buffer absorbs a burst handed over in one batch (64 x 64 KiB at most).
UPSTREAM_SNDBUF: Final = 4 << 20

PORT_TRIES: Final = 32  # random ports tried in this worker's share before any port

_route_cache: dict[tuple[int, str, int], tuple[str, float]] = {}
# With worker processes each binds its upstream sockets to the ports of its own share
# (port % count == index), so a reply that a firewall diverted to another worker names
# the worker that can deliver it (workers/agent.py). (0, 1): one process, any port.
_port_share: tuple[int, int] = (0, 1)
_port_range: tuple[int, int] | None = None


def share_ports(index: int, count: int) -> None:
    """This process binds upstream ports ``p`` with ``p % count == index`` from now on."""
    global _port_share  # noqa: PLW0603 (one setting per process, set once at its start)
    _port_share = (index, count)


def port_owner(port: int) -> int:
    """The index of the worker whose upstream sockets may be bound to ``port``."""
    return port % _port_share[1]


def _ephemeral_range() -> tuple[int, int]:
    global _port_range  # noqa: PLW0603 (read once)
    if _port_range is None:
        try:
            with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
                low, high = (int(n) for n in f.read().split())
        except (OSError, ValueError):
            low, high = 32768, 60999
        _port_range = (low, high)
    return _port_range


def _bind_in_share(sock: socket.socket, source: str) -> None:
    index, count = _port_share
    if count > 1:
        low, high = _ephemeral_range()
        for _ in range(PORT_TRIES):
            port = random.randint(low, high)
            port += (index - port) % count
            if port > high:
                continue
            try:
                sock.bind((source, port))
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
                continue
            return
    sock.bind((source, 0))  # one process, or the share is crowded: any port
# The bound address of every receiving link -> where its replies go.
_own_links: dict[Endpoint, DatagramSink] = {}


def deliver_own_reply(dst: Endpoint, payload: memoryview, remote: Endpoint) -> bool:
    """A datagram the ruleset diverted to a TPROXY listener: if ``dst`` is the address of
    one of our upstream links, it is that link's reply from ``remote``: delivered."""
    deliver = _own_links.get(dst)
    if deliver is None:
        return False
    deliver(payload, remote)
    return True


def family_of_text(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def route_source(dst: Endpoint, mark: int) -> str:
    """The local address the kernel would send from towards ``dst`` (OSError if none)."""
    family = family_of_text(dst[0])
    key = (family, dst[0], mark)
    now = time.monotonic()
    cached = _route_cache.get(key)
    if cached is not None and cached[1] > now:
        return cached[0]
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        set_mark(probe, mark)
        probe.connect(dst)
        source = str(probe.getsockname()[0])
    if len(_route_cache) >= ROUTE_CACHE_SIZE:
        _route_cache.clear()
    _route_cache[key] = (source, now + ROUTE_CACHE_TTL)
    return source


def open_upstream(first_dst: Endpoint, mark: int) -> socket.socket:
    """A non-blocking UDP socket with SO_MARK, bound to (route source, ephemeral port).

    Raises DialError with a complete message (no route, no CAP_NET_ADMIN, no ports).
    """
    family = family_of_text(first_dst[0])
    try:
        source = route_source(first_dst, mark)
    except OSError as exc:
        reason = f"cannot reach {show_addr(first_dst)}: {exc.strerror or exc}"
        raise DialError(exc.errno or errno.EHOSTUNREACH, reason) from None
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        set_mark(sock, mark)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        set_buffer(sock, socket.SO_RCVBUF, RCVBUF)
        set_buffer(sock, socket.SO_SNDBUF, UPSTREAM_SNDBUF)
        _bind_in_share(sock, source)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        reason = f"cannot open a UDP socket on {source}: {exc.strerror or exc}"
        raise DialError(exc.errno or errno.EIO, reason) from None
    return sock


class SocketLink:
    """A UdpLink over one unconnected upstream socket: datagrams go to each one's own
    destination, and replies from *any* remote come back (endpoint-independent
    mapping and filtering: full cone, as Xray's and sing-box's direct outbounds)."""

    outcome: str | None = None

    def __init__(self, sock: socket.socket, buffer: bytearray) -> None:
        self.sock = sock
        self._buffer = buffer
        self._out = gso.Coalescer(sock)
        self._local: Endpoint | None = None  # registered in _own_links while receiving
        self._deliver: DatagramSink | None = None

    def send(self, payload: memoryview, dst: Endpoint, domain: str | None) -> str | None:
        return self._out.send(payload, dst)

    async def receive(self, deliver: DatagramSink) -> None:
        self._register(deliver)
        try:
            await self._receive(deliver)
        finally:
            self._unregister()

    def _register(self, deliver: DatagramSink) -> None:
        try:
            host, port = self.sock.getsockname()[:2]
        except OSError:
            return
        self._local, self._deliver = (str(host), int(port)), deliver
        _own_links[self._local] = deliver

    def _unregister(self) -> None:
        # only our own entry: a new link may already be bound to the same port
        if self._local is not None and _own_links.get(self._local) is self._deliver:
            del _own_links[self._local]
        self._local = None

    async def _receive(self, deliver: DatagramSink) -> None:
        sock, buffer = self.sock, self._buffer
        view = memoryview(buffer)

        def read_batch() -> Batch | OSError:
            gso.open_batch()  # the replies delivered below go out together (inbound/gso.py)
            try:
                for _ in range(RECV_BATCH):
                    try:
                        size, sockaddr = sock.recvfrom_into(buffer)
                    except BlockingIOError:
                        return EMPTY
                    except OSError as exc:
                        return exc
                    deliver(view[:size], (sockaddr[0], sockaddr[1]))
                return FULL
            finally:
                gso.close_batch()

        await receive_batches(sock, read_batch)

    def close(self) -> None:
        self._unregister()
        close_socket(self.sock)
