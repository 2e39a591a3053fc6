"""Outbounds, one registry keyed by the config's ``type``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import BlockOutbound as BlockConfig
from ..config import Config
from ..config import DirectOutbound as DirectConfig
from ..config import DnsOutbound as DnsConfig
from ..config import HttpOutbound as HttpConfig
from ..config import SocksOutbound as SocksConfig
from ..sock import close_socket
from .base import FlowContext, Outbound, TcpFlow
from .block import BlockOutbound
from .dial import DialError, open_tcp
from .direct import DirectOutbound
from .dns import DnsOutbound
from .http import HttpOutbound
from .socks import SocksOutbound

# dns is structured and checked by config/ already; its implementation plugs in here
# (issue 7).
REGISTRY: dict[type[Any], Callable[[Any], Outbound]] = {
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

    async def handle_tcp(self, flow: TcpFlow) -> None:
        raise DialError(0, f"outbound {self.tag!r} ({self.kind}) is not implemented yet")


def build_outbounds(cfg: Config) -> dict[str, Outbound]:
    outbounds: dict[str, Outbound] = {}
    for ob in cfg.outbounds:
        factory = REGISTRY.get(type(ob))
        if factory is None:
            outbounds[ob.tag] = UnavailableOutbound(ob.tag, type(ob).TYPE)
        else:
            outbounds[ob.tag] = factory(ob)
    return outbounds


__all__ = [
    "BlockOutbound", "DialError", "DirectOutbound", "FlowContext", "HttpOutbound", "Outbound",
    "SocksOutbound", "TcpFlow",
    "UnavailableOutbound", "build_outbounds", "close_socket", "open_tcp",
]  # fmt: skip
