"""The ``socks`` outbound: SOCKS5 CONNECT (RFC 1928), RFC 1929 username/password.

A flow with a sniffed domain is requested by name (ATYP 3), so the proxy resolves it,
as v2ray's socks outbound does; otherwise by the original IP. Connecting and the
whole negotiation share one deadline, ``policy.handshake``: a proxy that is down,
refuses, rejects our credentials or never answers costs only the flow that asked,
whose client then gets a prompt reset (session.py), and the reason lands in the
access log, e.g. ``socks proxy 10.0.0.2:1080: CONNECT example.com:443 failed:
connection refused (reply 5)``.

UDP goes through a UDP ASSOCIATE per client source (:meth:`SocksOutbound.open_udp`,
socks_udp.py).
"""

from __future__ import annotations

import errno
import ipaddress
import socket

import attrs

from ..addr import IPAddress
from ..config import SocksOutbound as SocksConfig
from ..dial import DialError, ip_literal, recv_message
from ..relay import send_all
from ..resolver import Resolver, SystemResolver
from . import socks_proto as proto
from .base import Destination, SocketUpstream, UdpRequest
from .socks_udp import SocksUdpLink
from .tunnel import open_negotiated, socket_upstream

# The errno a failed reply maps to (DialError is an OSError); the text is what counts.
_REPLY_ERRNO = {
    2: errno.EACCES,
    3: errno.ENETUNREACH,
    4: errno.EHOSTUNREACH,
    5: errno.ECONNREFUSED,
    6: errno.ETIMEDOUT,
}


@attrs.frozen
class SocksServer:
    """Where a socks outbound's proxy is and how to log in."""

    host: str
    port: int
    credentials: tuple[str, str] | None
    mark: int
    # parsed once: the host is dialled for every flow
    ip: IPAddress | None = attrs.field(
        default=attrs.Factory(lambda self: ip_literal(self.host), takes_self=True), eq=False
    )

    @classmethod
    def from_config(cls, cfg: SocksConfig) -> SocksServer:
        credentials = None
        if cfg.username is not None and cfg.password is not None:
            credentials = (cfg.username, cfg.password)
        return cls(cfg.server.host, cfg.server.port, credentials, cfg.mark)

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"socks proxy {host}:{self.port}"

    @property
    def methods(self) -> list[int]:
        # With credentials, offer both: a proxy that needs none may pick "none" (curl
        # does the same); without, a proxy that insists answers "no acceptable method".
        if self.credentials is None:
            return [proto.METHOD_NO_AUTH]
        return [proto.METHOD_NO_AUTH, proto.METHOD_USERPASS]


async def negotiate(
    sock: socket.socket, server: SocksServer, command: int, host: proto.Host, port: int
) -> tuple[proto.Reply, bytes]:
    """Greeting, authentication and one request on a connected socket.

    Returns the successful reply and any bytes received after it; raises DialError
    with a complete log message otherwise.
    """
    peer = server.name
    try:
        request = proto.encode_request(command, host, port)
    except ValueError as exc:
        raise DialError(errno.EINVAL, f"{peer}: cannot request {host}:{port}: {exc}") from exc
    try:
        await send_all(sock, proto.encode_greeting(server.methods))
        method, rest = await recv_message(sock, proto.parse_method_choice, peer=peer)
        if method == proto.METHOD_NONE_ACCEPTABLE:
            offered = " or ".join(proto.METHOD_TEXT[m] for m in server.methods)
            hint = "" if server.credentials else " (set username and password?)"
            raise DialError(errno.EACCES, f"{peer}: refuses {offered}{hint}")
        if method not in server.methods:
            raise DialError(errno.EPROTO, f"{peer}: chose method {method:#04x}, not offered")
        if method == proto.METHOD_USERPASS:
            assert server.credentials is not None
            username, password = server.credentials
            await send_all(sock, proto.encode_userpass(username, password))
            status, rest = await recv_message(
                sock, proto.parse_auth_status, peer=peer, buffered=rest
            )
            if status != 0:
                raise DialError(errno.EACCES, f"{peer}: authentication failed for user "
                                f"{username!r} (RFC 1929 status {status})")  # fmt: skip
        await send_all(sock, request)
        reply, rest = await recv_message(sock, proto.parse_reply, peer=peer, buffered=rest)
    except DialError:
        raise
    except OSError as exc:  # a send failed: the proxy reset or went away
        raise DialError(exc.errno or errno.EIO, f"{peer}: {exc.strerror or exc}") from exc
    if reply.code != proto.REPLY_SUCCEEDED:
        raise DialError(
            _REPLY_ERRNO.get(reply.code, errno.EPROTO),
            f"{peer}: {proto.COMMAND_TEXT[command]} {proto.show_host(host, port)} failed: "
            f"{reply.text} (reply {reply.code})",
        )
    return reply, rest


async def socks_open(
    server: SocksServer,
    command: int,
    host: proto.Host,
    port: int,
    *,
    resolver: Resolver,
    timeout: float,  # noqa: ASYNC109
) -> tuple[socket.socket, proto.Reply, bytes]:
    """Connect to the proxy and negotiate ``command``, all within ``timeout``."""
    sock, (reply, rest) = await open_negotiated(
        server.name, (server.ip or server.host, server.port),
        lambda sock: negotiate(sock, server, command, host, port),
        mark=server.mark, resolver=resolver, timeout=timeout,
    )  # fmt: skip
    return sock, reply, rest


class SocksOutbound:
    def __init__(self, cfg: SocksConfig, resolver: Resolver | None = None) -> None:
        self.tag: str = cfg.tag
        self.server = SocksServer.from_config(cfg)
        self.resolver: Resolver = resolver or SystemResolver()

    async def open_stream(
        self,
        destination: Destination,
        *,
        timeout: float,  # noqa: ASYNC109
        initial: bytes = b"",
    ) -> SocketUpstream:
        sock, _, early = await socks_open(
            self.server, proto.CMD_CONNECT, destination.host, destination.port,
            resolver=self.resolver, timeout=timeout,
        )  # fmt: skip
        return await socket_upstream(sock, initial, chain=(self.tag,), early=early)

    async def open_udp(self, request: UdpRequest) -> SocksUdpLink:
        """A UDP ASSOCIATE for one client source, within the handshake timeout."""
        # RFC 1928 §6: all zeros when the client does not know its sending address yet
        # (and NAT on the way to the proxy may rewrite it anyway).
        control, reply, _ = await socks_open(
            self.server, proto.CMD_UDP_ASSOCIATE, ipaddress.IPv4Address(0), 0,
            resolver=self.resolver, timeout=request.handshake_timeout,
        )  # fmt: skip
        return await SocksUdpLink.start(
            self.server.name, control, reply, self.resolver, self.server.mark, request.buffer
        )
