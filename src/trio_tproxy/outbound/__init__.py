"""Outbounds, one registry keyed by the config's ``type``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from ..config import BlockOutbound as BlockConfig
from ..config import Config
from ..config import DirectOutbound as DirectConfig
from ..config import DnsOutbound as DnsConfig
from ..config import HttpOutbound as HttpConfig
from ..config import SocksOutbound as SocksConfig
from ..dial import DialError, open_tcp
from ..resolver import Resolver, SystemResolver
from ..sock import close_socket
from .base import Destination, FlowContext, StreamOutbound, TcpFlow, Upstream
from .block import BlockOutbound
from .direct import DirectOutbound
from .dns import DnsOutbound
from .http import HttpOutbound
from .socks import SocksOutbound

# dns is structured and checked by config/ already; its implementation plugs in here
# (issue 7).
REGISTRY: dict[type[Any], Callable[[Any, Resolver], StreamOutbound]] = {
    DirectConfig: DirectOutbound,
    BlockConfig: BlockOutbound,
    SocksConfig: SocksOutbound,
    HttpConfig: HttpOutbound,
    DnsConfig: DnsOutbound,  # attached to the runtime's DNS service by Runtime.build
}


class UnavailableOutbound:
    """Stands in for an outbound type this version cannot run yet.

    The config stays valid (``check`` knows the whole format), the gap is logged once at
    start, and every flow routed here is refused with a reason instead of vanishing.
    """

    def __init__(self, tag: str, kind: str) -> None:
        self.tag = tag
        self.kind = kind
        self.local_only = True

    async def open_stream(
        self,
        destination: Destination,
        *,
        timeout: float,  # noqa: ASYNC109
        initial: bytes = b"",
    ) -> Upstream:
        await trio.lowlevel.checkpoint()
        raise DialError(0, f"outbound {self.tag!r} ({self.kind}) is not implemented yet")


def build_outbounds(cfg: Config, resolver: Resolver | None = None) -> dict[str, StreamOutbound]:
    """Every configured outbound; ``resolver`` is what they look names up with (the
    runtime's DNS: a proxy given by name, direct's use_ip)."""
    resolver = resolver or SystemResolver()
    outbounds: dict[str, StreamOutbound] = {}
    for ob in cfg.outbounds:
        factory = REGISTRY.get(type(ob))
        if factory is None:
            outbounds[ob.tag] = UnavailableOutbound(ob.tag, type(ob).TYPE)
        else:
            outbounds[ob.tag] = factory(ob, resolver)
    return outbounds


__all__ = [
    "BlockOutbound", "DialError", "DirectOutbound", "FlowContext", "HttpOutbound",
    "SocksOutbound", "StreamOutbound", "TcpFlow",
    "UnavailableOutbound", "build_outbounds", "close_socket", "open_tcp",
]  # fmt: skip
