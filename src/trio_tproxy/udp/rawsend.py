"""The reply path of last resort: whole IP packets through IPPROTO_RAW sockets.

A reply socket is a transparent UDP socket bound to the remote's address and port. The
bind fails with "address already in use" when a local service holds that port on the
wildcard address without SO_REUSEADDR (v2ray-core#2484, #1971: dnsmasq on :53, a game
server on its port). The session must not break over it, so the reply is built by
``udp/packet.py`` and sent here: an IPPROTO_RAW socket takes the IP header as given
(IP_HDRINCL, implied; IPv6 too since Linux 4.5), needs no bind, and never receives,
so it costs no copies of incoming traffic. The kernel still routes it, fills the IPv4
ID and header checksum, and applies SO_MARK. It does not fragment: a reply larger than
the path MTU is dropped (EMSGSIZE) -- the fallback's one limit.
"""

from __future__ import annotations

import ipaddress
import logging
import socket

from ..addr import Endpoint
from ..caps import CAP_NET_RAW, missing_line
from ..inbound.sockopt import SocketSetupError, set_mark
from .packet import udp_packet

log = logging.getLogger("trio_tproxy.udp.rawsend")


class RawSender:
    """One IPPROTO_RAW socket per address family, opened on first use."""

    def __init__(self, mark: int) -> None:
        self.mark = mark
        self._socks: dict[int, socket.socket] = {}

    def _socket(self, family: int) -> socket.socket:
        sock = self._socks.get(family)
        if sock is None:
            try:
                sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW)
            except PermissionError as exc:  # (a sendto EPERM is a firewall drop instead)
                message = missing_line(CAP_NET_RAW, ["raw replies"])
                raise SocketSetupError(exc.errno, message) from exc
            try:
                set_mark(sock, self.mark)
                sock.setblocking(False)
            except OSError:
                sock.close()
                raise
            self._socks[family] = sock
        return sock

    def send(self, src: Endpoint, dst: Endpoint, payload: memoryview) -> str | None:
        """Send ``payload`` from src to dst; None, or why it was dropped."""
        try:
            source = ipaddress.ip_address(src[0])
            target = ipaddress.ip_address(dst[0])
            packet = udp_packet(source, src[1], target, dst[1], bytes(payload))
            family = socket.AF_INET6 if target.version == 6 else socket.AF_INET
            self._socket(family).sendto(packet, (dst[0], 0))
        except BlockingIOError:
            return "raw send buffer full"
        except ValueError as exc:
            return str(exc)
        except OSError as exc:
            return f"raw send: {exc.strerror or exc}"
        return None

    def close(self) -> None:
        for sock in self._socks.values():
            sock.close()
        self._socks.clear()
