"""Outbounds, one registry keyed by the config's ``type``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import trio

from ..config import GROUP_TYPES, Config, ConfigError, ConfigErrors
from ..config import BlockOutbound as BlockConfig
from ..config import DirectOutbound as DirectConfig
from ..config import DnsOutbound as DnsConfig
from ..config import HttpOutbound as HttpConfig
from ..config import ShadowsocksOutbound as ShadowsocksConfig
from ..config import SocksOutbound as SocksConfig
from ..config import TrojanOutbound as TrojanConfig
from ..dial import DialError, open_tcp
from ..resolver import Resolver, SystemResolver
from ..sock import close_socket
from .base import Destination, FlowContext, StreamOutbound, TcpFlow, Upstream
from .block import BlockOutbound
from .direct import DirectOutbound
from .dns import DnsOutbound
from .group import GroupOutbound, GroupState
from .http import HttpOutbound
from .socks import SocksOutbound


# Shadowsocks and trojan are imported when a config names them: shadowsocks pulls in
# cryptography's OpenSSL build and blake3 (~7 MB of memory per process), and a process
# whose config does not use them should not pay for that.
def _shadowsocks(cfg: ShadowsocksConfig, resolver: Resolver) -> StreamOutbound:
    from .shadowsocks import ShadowsocksOutbound  # noqa: PLC0415

    return ShadowsocksOutbound(cfg, resolver)


def _trojan(cfg: TrojanConfig, resolver: Resolver) -> StreamOutbound:
    from .trojan import TrojanOutbound  # noqa: PLC0415

    return TrojanOutbound(cfg, resolver)


# dns is structured and checked by config/ already; its implementation plugs in here
# (issue 7).
REGISTRY: dict[type[Any], Callable[[Any, Resolver], StreamOutbound]] = {
    DirectConfig: DirectOutbound,
    BlockConfig: BlockOutbound,
    SocksConfig: SocksOutbound,
    HttpConfig: HttpOutbound,
    ShadowsocksConfig: _shadowsocks,
    TrojanConfig: _trojan,
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


def build_outbounds(
    cfg: Config,
    resolver: Resolver | None = None,
    groups: GroupState | None = None,
    server_resolver: Resolver | None = None,
) -> dict[str, StreamOutbound]:
    """Every configured outbound; ``resolver`` is what they look names up with (the
    runtime's DNS: direct's use_ip, group probes); ``server_resolver`` finds the
    servers of the proxy outbounds (socks, http, shadowsocks, trojan) - the DNS without
    the servers reached through a proxy; ``groups``: the group state a reload keeps
    (probe history, choices)."""
    resolver = resolver or SystemResolver()
    server_resolver = server_resolver or resolver
    groups = groups or GroupState()
    outbounds: dict[str, StreamOutbound] = {}
    errors: list[ConfigError] = []
    for i, ob in enumerate(cfg.outbounds):
        factory = REGISTRY.get(type(ob))
        if isinstance(ob, GROUP_TYPES):  # members are looked up in `outbounds` per flow
            outbounds[ob.tag] = GroupOutbound(ob, outbounds, groups, resolver)
        elif factory is None:
            outbounds[ob.tag] = UnavailableOutbound(ob.tag, type(ob).TYPE)
        else:
            try:
                # a proxy's own server: never looked up through a proxy (itself, maybe)
                finder = server_resolver if hasattr(ob, "server") else resolver
                outbounds[ob.tag] = factory(ob, finder)
            except (ValueError, OSError) as exc:  # a key, a CA file (ssl.SSLError is OSError)
                errors.append(ConfigError(f"outbound {ob.tag!r}: {_reason(exc)}",
                                          f"$.outbounds[{i}]"))  # fmt: skip
    if errors:
        raise ConfigErrors(errors)
    return outbounds


def _reason(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc)


__all__ = [
    "BlockOutbound",
    "DialError",
    "DirectOutbound",
    "FlowContext",
    "GroupOutbound",
    "GroupState",
    "HttpOutbound",
    "SocksOutbound",
    "StreamOutbound",
    "TcpFlow",
    "UnavailableOutbound",
    "build_outbounds",
    "close_socket",
    "open_tcp",
]  # fmt: skip
