"""The resolver interface the router's domain strategies use.

The built-in DNS splitter (issue 7) implements it; until it is configured, the system
resolver stands behind the same interface. Failures are not errors for routing: an
unresolvable domain simply has no addresses, so IP conditions do not match.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import Protocol

import trio

from .addr import IPAddress, unmap

log = logging.getLogger("trio_tproxy.resolver")

RESOLVE_TIMEOUT = 4.0  # v2ray's per-server DNS timeout


class Resolver(Protocol):
    async def resolve(self, domain: str) -> Sequence[IPAddress]:
        """All addresses of ``domain`` (A and AAAA); empty when it does not resolve."""


class SystemResolver:
    async def resolve(self, domain: str) -> Sequence[IPAddress]:
        with trio.move_on_after(RESOLVE_TIMEOUT):
            try:
                infos = await trio.socket.getaddrinfo(domain, None, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                log.debug("resolving %s failed: %s", domain, exc)
                return ()
            seen: dict[IPAddress, None] = {}
            for *_, sockaddr in infos:
                seen[unmap(ipaddress.ip_address(str(sockaddr[0]).split("%")[0]))] = None
            return tuple(seen)
        log.debug("resolving %s timed out", domain)
        return ()


class LateResolver:
    """A resolver known only after what uses it was built (the outbounds, then the DNS
    that dials through them): asks ``target`` once it is set, the system before."""

    def __init__(self) -> None:
        self.target: Resolver = SystemResolver()

    async def resolve(self, domain: str) -> Sequence[IPAddress]:
        return await self.target.resolve(domain)
