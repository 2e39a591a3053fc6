"""The ``http`` outbound: every TCP flow through an HTTP proxy's CONNECT tunnel.

As v2ray's http outbound (reference §4): the target is the sniffed domain if there is
one (the proxy resolves it), else the original IP; ``Proxy-Authorization: Basic`` when
credentials are set; only a 2xx answer opens the tunnel, anything else fails the flow
with the proxy's status in the access log (``http proxy 10.0.0.3:3128: CONNECT
example.com:443 refused: 403 Forbidden``). Connecting and the answer share one
deadline, ``policy.handshake``. HTTP CONNECT carries no UDP, so this outbound has no
``open_udp``: the UDP session table drops flows routed here, with a warning (once) and
the reason in each flow's access-log line.
"""

from __future__ import annotations

import errno
import socket

from ..config import HttpOutbound as HttpConfig
from ..dial import DialError, ip_literal, recv_message
from ..relay import send_all
from ..resolver import Resolver, SystemResolver
from ..sock import close_socket
from .base import Destination, SocketUpstream
from .http_proto import ConnectResponse, authority, encode_connect, parse_connect_response
from .socks_proto import Host
from .tunnel import open_negotiated, socket_upstream


class HttpOutbound:
    def __init__(self, cfg: HttpConfig, resolver: Resolver | None = None) -> None:
        self.tag: str = cfg.tag
        self.resolver: Resolver = resolver or SystemResolver()
        self.host = cfg.server.host
        self.ip = ip_literal(self.host)  # parsed once: the host is dialled for every flow
        self.port = cfg.server.port
        self.mark = cfg.mark
        self.credentials: tuple[str, str] | None = None
        if cfg.username is not None and cfg.password is not None:
            self.credentials = (cfg.username, cfg.password)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.peer = f"http proxy {host}:{self.port}"

    async def open_stream(
        self,
        destination: Destination,
        *,
        timeout: float,  # noqa: ASYNC109
        initial: bytes = b"",
    ) -> SocketUpstream:
        sock, early = await self.open_tunnel(destination.host, destination.port,
                                             resolver=self.resolver, timeout=timeout)  # fmt: skip
        return await socket_upstream(sock, initial, chain=(self.tag,), early=early)

    async def open_tunnel(
        self,
        host: Host,
        port: int,
        *,
        resolver: Resolver,
        timeout: float,  # noqa: ASYNC109
    ) -> tuple[socket.socket, bytes]:
        """A socket tunnelled to ``host:port``, and any bytes that followed the answer."""
        sock, (response, early) = await open_negotiated(
            self.peer, (self.ip or self.host, self.port),
            lambda sock: self._connect(sock, host, port),
            mark=self.mark, resolver=resolver, timeout=timeout,
        )  # fmt: skip
        if not response.opens_tunnel:
            close_socket(sock)
            raise DialError(
                errno.EACCES if response.status in (403, 407) else errno.ECONNREFUSED,
                f"{self.peer}: CONNECT {authority(host, port)} refused: "
                f"{response.status} {response.reason}".rstrip(),
            )
        return sock, early

    async def _connect(
        self, sock: socket.socket, host: Host, port: int
    ) -> tuple[ConnectResponse, bytes]:
        try:
            await send_all(sock, encode_connect(host, port, self.credentials))
        except OSError as exc:
            raise DialError(exc.errno or errno.EIO, f"{self.peer}: {exc.strerror or exc}") from exc
        return await recv_message(sock, parse_connect_response, peer=self.peer)
