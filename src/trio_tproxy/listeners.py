"""Every listening socket of a gateway, bound together before anything is served.

One process binds them all (app.py). With worker processes the supervisor binds them
(workers/supervisor.py): for each worker slot its own SO_REUSEPORT socket per inbound,
and once the hub's dns.listen and controller API sockets. It keeps them open for the
life of the gateway, so a worker that dies and is started again finds its slot's
sockets, with the connections queued meanwhile, and the kernel's spreading of clients
over the slots does not change.
"""

from __future__ import annotations

import socket

import attrs

from .config import Config, Inbound
from .dns.server import DnsListener, open_dns_listener
from .inbound.tcp import open_tcp_listener
from .inbound.udp import open_udp_listener
from .sock import close_socket


@attrs.define
class Listeners:
    tcp: list[tuple[Inbound, socket.socket]] = attrs.field(factory=list)
    udp: list[tuple[Inbound, socket.socket]] = attrs.field(factory=list)
    dns: list[DnsListener] = attrs.field(factory=list)
    api: socket.socket | None = None

    @classmethod
    def open(
        cls, cfg: Config, *, inbounds: bool = True, services: bool = True, reuseport: bool = False
    ) -> Listeners:
        """Bind what the part serves; SocketSetupError (one clear line) if one cannot be."""
        bound = cls()
        try:
            if inbounds:
                for ib in cfg.inbounds:
                    if "tcp" in ib.network:
                        bound.tcp.append((ib, open_tcp_listener(ib, reuseport=reuseport)))
                for ib in cfg.inbounds:
                    if "udp" in ib.network:
                        bound.udp.append((ib, open_udp_listener(ib, reuseport=reuseport)))
            if services:
                bound.dns += [open_dns_listener(where) for where in cfg.dns.listen]
                if cfg.api is not None:
                    from .api import open_api_listener  # noqa: PLC0415 (the API only when on)

                    bound.api = open_api_listener(cfg.api.listen)
        except BaseException:
            bound.close()
            raise
        return bound

    def describe(self) -> list[str]:
        """What is served where, for the "ready:" line ("tproxy-in (tproxy) on tcp
        [::]:12345", "dns on udp+tcp 10.0.0.1:53")."""
        return [
            *(f"{ib.tag} ({ib.TYPE}) on tcp {_where(ib)}" for ib, _ in self.tcp),
            *(f"{ib.tag} ({ib.TYPE}) on udp {_where(ib)}" for ib, _ in self.udp),
            *(f"dns on udp+tcp {dns.where}" for dns in self.dns),
        ]

    def sockets(self) -> list[socket.socket]:
        """The inbounds' and the API's (dns.listen's are closed through their listener)."""
        return [
            *(sock for _, sock in self.tcp),
            *(sock for _, sock in self.udp),
            *([self.api] if self.api is not None else []),
        ]

    def close_inbounds(self) -> None:
        """The TCP listeners: no new connections (UDP ones drain with their service)."""
        for _, sock in self.tcp:
            close_socket(sock)

    def close_services(self) -> None:
        for dns in self.dns:
            dns.close()

    def close(self) -> None:
        for sock in self.sockets():
            close_socket(sock)
        self.close_services()


def _where(ib: Inbound) -> str:
    return f"[{ib.listen}]:{ib.port}" if ":" in ib.listen else f"{ib.listen}:{ib.port}"
