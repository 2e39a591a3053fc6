"""What the engine knows about a flow: a frozen :class:`FlowFacts`.

How a domain target is modelled (v2ray, reference sections 2-3): after sniffing
overrides the destination, the target *is* the domain and its original IP is invisible
to ``ip`` rules under ``as_is``. Here that is simply ``dst_ip=None``:

* IP target (no sniffed domain, or sniffing failed): ``domain=None, dst_ip=<ip>``;
* domain target (destination overridden): ``domain="x.com", dst_ip=None``. ``ip`` rules
  see no address unless ``domain_strategy`` resolves the domain (``Router.decide``
  returns :class:`~.engine.NeedIps`);
* ``route_only`` sniffing (Xray ``routeOnly``: domain for routing, dial the original
  IP): ``domain="x.com", dst_ip=<ip>``; domain rules see the domain, ip rules the
  original address, and nothing needs resolving (Xray's routing context does the same).

Addresses are normalised on construction: IPv4-mapped IPv6 becomes IPv4 (dual-stack
sockets report ``::ffff:a.b.c.d``). Domains are normalised by :func:`normalize_domain`.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

import attrs

from ..addr import IPAddress, unmap

__all__ = ["FlowFacts", "normalize_domain", "parse_target"]


def normalize_domain(name: str) -> str:
    """Lower-case, without the trailing root dot: how every matcher expects a domain."""
    return name.strip().rstrip(".").lower()


def _opt_ip(value: IPAddress | None) -> IPAddress | None:
    return None if value is None else unmap(value)


def _domain(value: str | None) -> str | None:
    return None if value is None else normalize_domain(value) or None


@attrs.frozen
class FlowFacts:
    network: Literal["tcp", "udp"]
    dst_ip: IPAddress | None = attrs.field(converter=_opt_ip)
    dst_port: int
    domain: str | None = attrs.field(default=None, converter=_domain)
    src_ip: IPAddress | None = attrs.field(default=None, converter=_opt_ip)
    src_port: int = 0
    inbound_tag: str = ""
    protocol: str | None = None  # sniffed: "http1", "tls", "quic", "bittorrent", "dns"

    def __attrs_post_init__(self) -> None:
        if self.dst_ip is None and self.domain is None:
            raise ValueError("a flow needs a destination: dst_ip, domain or both")

    @property
    def target_is_domain(self) -> bool:
        """True when ip rules cannot see an address without resolving the domain."""
        return self.dst_ip is None

    @property
    def target(self) -> str:
        return self.domain if self.domain is not None else str(self.dst_ip)


def parse_target(text: str) -> tuple[IPAddress | None, str | None]:
    """``match TARGET``: an IP literal (``[v6]`` allowed) or a domain, normalised."""
    raw = text.strip()
    try:
        return unmap(ipaddress.ip_address(raw.removeprefix("[").removesuffix("]"))), None
    except ValueError:
        return None, normalize_domain(raw)
