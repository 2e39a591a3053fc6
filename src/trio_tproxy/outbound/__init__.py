"""Outbounds, one registry keyed by the config's ``type``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import BlockOutbound as BlockConfig
from ..config import Config
from ..config import DirectOutbound as DirectConfig
from .base import FlowContext, Outbound, TcpFlow
from .block import BlockOutbound
from .dial import DialError, close_socket, open_tcp
from .direct import DirectOutbound

# socks, http and dns are structured and checked by config/ already; their
# implementations plug in here (issues 6 and 7).
REGISTRY: dict[type[Any], Callable[[Any], Outbound]] = {
    DirectConfig: DirectOutbound,
    BlockConfig: BlockOutbound,
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
    "BlockOutbound", "DialError", "DirectOutbound", "FlowContext", "Outbound", "TcpFlow",
    "UnavailableOutbound", "build_outbounds", "close_socket", "open_tcp",
]  # fmt: skip
