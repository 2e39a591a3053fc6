"""Small scripted peers on loopback for outbound tests: a SOCKS5 server (CONNECT and
UDP ASSOCIATE), an HTTP CONNECT proxy, a resolver, and flows built on socket pairs."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence

import attrs
import trio

from trio_tproxy.addr import IPAddress, SockAddr
from trio_tproxy.outbound.base import FlowContext, TcpFlow
from trio_tproxy.outbound.socks_proto import (
    Host,
    encode_address,
    encode_udp,
    parse_address,
    parse_udp,
)
from trio_tproxy.relay import BufferPool, RelayTimeouts


class FakeResolver:
    def __init__(self, answers: dict[str, Sequence[IPAddress]] | None = None) -> None:
        self.answers = answers or {}
        self.asked: list[str] = []

    async def resolve(self, domain: str) -> Sequence[IPAddress]:
        self.asked.append(domain)
        return self.answers.get(domain, ())


def context(handshake: float = 5.0) -> FlowContext:
    return FlowContext(
        pool=BufferPool(65536), timeouts=RelayTimeouts(idle=10), handshake_timeout=handshake
    )


def make_flow(proxy_side: socket.socket, dst: SockAddr, domain: str | None = None,
              prefix: bytes = b"", ctx: FlowContext | None = None) -> TcpFlow:  # fmt: skip
    return TcpFlow(proxy_side, dst, domain, prefix, ctx or context())


async def run_flow(outbound: object, flow: TcpFlow, resolver: FakeResolver | None = None) -> None:
    """What the session does with a routed flow: open the outbound's stream, relay.
    The outbound resolves through ``resolver`` (as the runtime's through its DNS)."""
    from trio_tproxy.session import carry

    if hasattr(outbound, "resolver"):
        outbound.resolver = resolver or FakeResolver()
    await carry(flow, outbound)


async def receive_exactly(stream: trio.SocketStream, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await stream.receive_some(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


async def receive_address(stream: trio.SocketStream) -> tuple[Host, int, bytes]:
    data = await receive_exactly(stream, 1)
    while (parsed := parse_address(data, 0)) is None:
        data += await receive_exactly(stream, 1)
    host, port, _ = parsed
    return host, port, data


@attrs.define
class SocksRequest:
    greeting: bytes = b""
    auth: bytes = b""
    command: int = 0
    host: Host | None = None
    port: int = 0
    address_bytes: bytes = b""


@attrs.define
class FakeSocksServer:
    """Speaks just enough SOCKS5; after a successful CONNECT it echoes (after ``early``).

    ``method`` is what it chooses (None: the first offered), ``auth_ok`` the RFC 1929
    verdict, ``reply`` the request's reply code, ``silent`` never answers at all.
    For UDP ASSOCIATE it answers with its own UDP relay (``relay_host`` as BND.ADDR),
    which echoes each datagram back with the same header (``udp_extra`` datagrams are
    sent first: fragments, garbage; ``answer_as`` replies to a name from an address,
    as a real relay that resolved it does).
    """

    method: int | None = None
    auth_ok: bool = True
    reply: int = 0
    early: bytes = b""
    silent: bool = False
    relay_host: IPAddress = ipaddress.IPv4Address("127.0.0.1")
    udp_extra: list[bytes] = attrs.field(factory=list)
    answer_as: dict[str, IPAddress] = attrs.field(factory=dict)  # name -> replying address
    requests: list[SocksRequest] = attrs.field(factory=list)
    controls: list[trio.SocketStream] = attrs.field(factory=list)
    udp_seen: list[bytes] = attrs.field(factory=list)
    port: int = 0
    udp: trio.socket.SocketType | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        self.udp = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await self.udp.bind(("127.0.0.1", 0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._relay)
            await nursery.start(trio.serve_listeners, self._handle, listeners)
            task_status.started()

    async def _handle(self, stream: trio.SocketStream) -> None:
        req = SocksRequest()
        self.requests.append(req)
        head = await receive_exactly(stream, 2)
        req.greeting = head + await receive_exactly(stream, head[1])
        if self.silent:
            await trio.sleep_forever()
        offered = list(req.greeting[2:])
        method = offered[0] if self.method is None else self.method
        await stream.send_all(bytes([5, method]))
        if method == 0xFF:
            return
        if method == 2:
            ulen = await receive_exactly(stream, 2)
            user = await receive_exactly(stream, ulen[1])
            plen = await receive_exactly(stream, 1)
            req.auth = ulen + user + plen + await receive_exactly(stream, plen[0])
            await stream.send_all(b"\x01" + (b"\x00" if self.auth_ok else b"\x01"))
            if not self.auth_ok:
                return
        head = await receive_exactly(stream, 3)
        req.command = head[1]
        req.host, req.port, req.address_bytes = await receive_address(stream)
        assert self.udp is not None
        bound: SockAddr = (
            (self.relay_host, self.udp.getsockname()[1]) if req.command == 3
            else (ipaddress.IPv4Address("127.0.0.1"), 4242)
        )  # fmt: skip
        await stream.send_all(
            b"\x05" + bytes([self.reply, 0]) + encode_address(*bound) + self.early
        )
        if self.reply != 0:
            return
        if req.command == 3:
            self.controls.append(stream)
            await trio.sleep_forever()  # the association lives while this connection does
        while data := await stream.receive_some(65536):
            await stream.send_all(data)

    async def _relay(self) -> None:
        assert self.udp is not None
        while True:
            data, peer = await self.udp.recvfrom(65535)
            self.udp_seen.append(data)
            for extra in self.udp_extra:
                await self.udp.sendto(extra, peer)
            datagram = parse_udp(data)
            host = datagram.host
            if isinstance(host, str):
                host = self.answer_as.get(host, host)
            await self.udp.sendto(encode_udp(host, datagram.port, datagram.payload), peer)

    async def close_controls(self) -> None:
        for stream in self.controls:
            await stream.aclose()
        self.controls.clear()


@attrs.define
class FakeHttpProxy:
    """Answers every CONNECT with ``response`` (then echoes on 2xx); records requests."""

    response: bytes = b"HTTP/1.1 200 Connection established\r\n\r\n"
    silent: bool = False
    requests: list[bytes] = attrs.field(factory=list)
    port: int = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        await trio.serve_listeners(self._handle, listeners, task_status=task_status)

    async def _handle(self, stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = await stream.receive_some(4096)
            if not chunk:
                return
            head += chunk
        self.requests.append(head)
        if self.silent:
            await trio.sleep_forever()
        await stream.send_all(self.response)
        complete = b"\r\n\r\n" in self.response
        if not complete or not self.response.split(b" ", 2)[1].startswith(b"2"):
            return
        while data := await stream.receive_some(65536):
            await stream.send_all(data)


async def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    with trio.fail_after(10):
        while len(data) < n:
            try:
                chunk = sock.recv(n - len(data))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            if not chunk:
                break
            data += chunk
    return data


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109
    """Poll ``predicate`` (state changed by other tasks and real sockets); generous
    timeout for a loaded machine, failing loudly rather than hanging."""
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 (the state has no event to wait on)
            await trio.sleep(0.01)
