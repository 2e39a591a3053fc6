"""The ``shadowsocks`` outbound: AEAD (SIP004) and 2022 (SIP022) methods, TCP and UDP.

TCP: one connection to the server per flow. The first write carries the salt, the
request header (the SOCKS-style address: the sniffed domain when there is one, else
the IP) and the client's first bytes, so the flow costs no extra round trip (when
sniffing did not read them, the request waits for the client's first write). The
connection is a :class:`~trio_tproxy.upstreams.StreamUpstream`: bytes are encrypted and
decrypted in userspace (shadowsocks_proto.py, shadowsocks_decoder.py: sans-IO), by the
relay engine's pass while the flow is short, then by the relay's two pumps
(shadowsocks_stream.py).

A Shadowsocks server never says "wrong key": ss-server holds such a connection open
in silence, others close it. So until a response has once decrypted with our key, a
flow whose server has not answered within ``policy.handshake`` of its request is cut
and logged as a likely wrong password or method; once the key is proven (a valid
response in the last :data:`PROVEN_FOR` seconds) slow destinations (long polls) are
left alone. This module keeps that key state; the stream applies it.

UDP (``network`` includes "udp"): one socket per client session, connected to the
server (shadowsocks_udp.py).
"""

from __future__ import annotations

import errno
import logging
import socket

import trio

from ..addr import IPAddress
from ..config import ShadowsocksOutbound as ShadowsocksConfig
from ..dial import DialError, ip_literal, open_tcp_host
from ..inbound.sockopt import set_mark
from ..relay import send_all
from ..resolver import Resolver, SystemResolver
from ..sock import addr_to_sockaddr, close_socket, family_of
from . import shadowsocks_decoder as decoder
from . import shadowsocks_proto as proto
from .base import Destination, StreamUpstream, UdpRequest
from .shadowsocks_stream import ShadowsocksStream
from .shadowsocks_udp import ShadowsocksUdpLink
from .socks_proto import Host, encode_address
from .tunnel import handshake_timeout

log = logging.getLogger("trio_tproxy.outbound.shadowsocks")

# A key counts as proven for this long after a response decrypted with it.
PROVEN_FOR = 600.0
WARN_EVERY = 60.0  # seconds between two warnings about the same outbound's key


class ShadowsocksOutbound:
    def __init__(self, cfg: ShadowsocksConfig, resolver: Resolver | None = None) -> None:
        self.tag: str = cfg.tag
        self.method: str = cfg.method
        self.v2022 = proto.is_2022(cfg.method)
        # ValueError for a 2022 password that is not a key of the right length: `check`
        # reports it with its path before anything is built.
        self.key = proto.master_key(cfg.method, cfg.password)
        self.host = cfg.server.host
        self.port = cfg.server.port
        self.ip: IPAddress | None = ip_literal(self.host)
        self.mark = cfg.mark
        self.udp = "udp" in cfg.network
        self.tcp = "tcp" in cfg.network
        self.resolver: Resolver = resolver or SystemResolver()
        self.name = f"shadowsocks {self.tag}"
        self._proven_until = -1.0
        self._warned_at = -WARN_EVERY

    # -- key state -------------------------------------------------------------------

    def proven(self) -> bool:
        return trio.current_time() < self._proven_until

    def prove(self) -> None:
        self._proven_until = trio.current_time() + PROVEN_FOR

    def failed(self, reason: str) -> DialError:
        """The flow's error for a likely key problem; warns at most every WARN_EVERY."""
        message = f"{self.name}: {reason}"
        now = trio.current_time()
        if now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("%s", message)
        return DialError(errno.EPROTO, message)

    # -- TCP -------------------------------------------------------------------------

    def _encryptor(self) -> proto.Encryptor:
        if self.v2022:
            return proto.RequestEncoder(self.method, self.key)
        return proto.Encryptor(self.method, self.key)

    def first_write(self, enc: proto.Encryptor, host: Host, port: int, initial: bytes) -> bytes:
        """Salt, request header and the client's first bytes (SIP022: padding instead
        when there are none)."""
        if not isinstance(enc, proto.RequestEncoder):
            return enc.encrypt(encode_address(host, port) + initial)
        # The variable header holds at most 0xFFFF bytes: what does not fit follows.
        room = proto.MAX_PAYLOAD_2022 - len(encode_address(host, port)) - 2
        head = enc.header(host, port, initial[:room])
        if len(initial) > room:
            head += enc.encrypt(initial[room:])
        return head

    async def _connect(self, deadline: float, timeout: float) -> socket.socket:  # noqa: ASYNC109
        """The server's connection. A connect to an IP has its own timeout: no cancel
        scope per flow for it; a name's lookup counts against the handshake too."""
        try:
            if self.ip is not None:
                return await open_tcp_host(self.ip, self.port, resolver=self.resolver,
                                           mark=self.mark, timeout=timeout)  # fmt: skip
            with trio.move_on_at(deadline):
                return await open_tcp_host(self.host, self.port, resolver=self.resolver,
                                           mark=self.mark, timeout=timeout)  # fmt: skip
        except DialError as exc:
            raise DialError(exc.errno, f"{self.name}: {exc}") from exc
        raise handshake_timeout(self.name, timeout)

    async def open_stream(
        self,
        destination: Destination,
        *,
        timeout: float,  # noqa: ASYNC109
        initial: bytes = b"",
    ) -> StreamUpstream:
        if not self.tcp:
            raise DialError(errno.EPROTONOSUPPORT, f"{self.name}: network excludes tcp")
        target = (destination.host, destination.port)
        enc = self._encryptor()
        try:
            # Nothing from the client yet (sniffing off, a server-first port): the
            # request waits for its first bytes, to go in one write and one segment
            # with them (see ShadowsocksStream); else it goes now, with them.
            if initial:
                first = self.first_write(enc, *target, initial)
            else:
                first = b""
                encode_address(*target)  # requestable? (checked now, not at the first read)
        except ValueError as exc:  # a name over 255 bytes
            raise DialError(errno.EINVAL, f"{self.name}: cannot request it: {exc}") from exc
        deadline = trio.current_time() + timeout
        sock = await self._connect(deadline, timeout)
        if first:
            try:
                sent = sock.send(first)
                if sent < len(first):
                    with trio.move_on_at(deadline) as scope:
                        await send_all(sock, memoryview(first)[sent:])
                    if scope.cancelled_caught:
                        raise handshake_timeout(self.name, timeout)
            except OSError as exc:
                close_socket(sock)
                if isinstance(exc, DialError):
                    raise
                reason = f"{self.name}: sending the request failed: {exc}"
                raise DialError(exc.errno or errno.EIO, reason) from exc
            except BaseException:  # cancelled meanwhile
                close_socket(sock)
                raise
        if self.v2022:
            dec: decoder.Decryptor = decoder.ResponseDecoder(self.method, self.key, enc.salt)
        else:
            dec = decoder.Decryptor(self.method, self.key)
        stream = ShadowsocksStream(self, sock, enc, dec, deadline, timeout,
                                   None if first else target)  # fmt: skip
        return StreamUpstream(stream, chain=(self.tag,))

    # -- UDP -------------------------------------------------------------------------

    async def open_udp(self, request: UdpRequest) -> ShadowsocksUdpLink:
        if not self.udp:
            raise DialError(errno.EPROTONOSUPPORT,
                            f"outbound {self.tag!r} (shadowsocks) does not carry UDP: "
                            "network excludes udp")  # fmt: skip
        ip = self.ip
        if ip is None:
            with trio.move_on_after(request.handshake_timeout):
                ips = await self.resolver.resolve(self.host)
                ip = ips[0] if ips else None
            if ip is None:
                raise DialError(errno.EHOSTUNREACH, f"{self.name}: cannot resolve {self.host!r}")
        sock = socket.socket(family_of(ip), socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            set_mark(sock, self.mark)
            # Connected: the kernel drops datagrams from anyone but the server.
            sock.connect(addr_to_sockaddr((ip, self.port), sock.family))
        except OSError as exc:
            sock.close()
            raise DialError(exc.errno or errno.EIO,
                            f"{self.name}: UDP socket: {exc.strerror or exc}") from exc  # fmt: skip
        return ShadowsocksUdpLink(self, sock, request.buffer)


__all__ = ["ShadowsocksOutbound", "ShadowsocksStream"]
