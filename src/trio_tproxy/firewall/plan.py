"""What the kernel should divert, and where: the input of every ruleset generator.

A `DiversionPlan` is a frozen description, validated on construction, so the
renderers (`firewall.nft`, later iptables) can trust every field and simply format
it.  Validation matters beyond tidiness: interface and table names end up inside an
nft script, so they are checked against what the kernel accepts rather than quoted.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Any

import attrs

# v2ray's geoip:private, exactly (`v2fly/geoip` plugin/special/private.go; see
# reference/v2ray-semantics.md): reserved, private, loopback, link-local, multicast and
# documentation ranges.  The gateway recipe never diverts these.
RESERVED_V4: tuple[str, ...] = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.0.2.0/24",
    "192.88.99.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "255.255.255.255/32",
)
RESERVED_V6: tuple[str, ...] = (
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
)

# Linux IFNAMSIZ is 16 including the NUL; '/' and whitespace are refused by the kernel,
# quotes would break out of the nft string.  '*' is nft's wildcard suffix ("eth*").
_IFNAME = re.compile(r"[A-Za-z0-9_.:@*+-]{1,15}")
# nft identifiers: a letter, then letters, digits, '_' (the nft grammar allows a few
# more, but a table name is ours to choose).
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")
_MAX_MARK = 0xFFFF_FFFF
# Table ids 253-255 are default/main/local; 0 is "unspec".
_RESERVED_ROUTE_TABLES = frozenset({0, 253, 254, 255})


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        # tuple("eth0") would silently become ('e', 't', 'h', '0').
        raise TypeError(f"expected a sequence of strings, got the string {value!r}")
    return tuple(value)


def _check_identifier(_inst: Any, attr: attrs.Attribute[str], value: str) -> None:
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"{attr.name} must be an nft identifier, got {value!r}")


def _check_port(_inst: Any, attr: attrs.Attribute[int | None], value: int | None) -> None:
    if value is not None and not 1 <= value <= 65535:
        raise ValueError(f"{attr.name} must be in 1..65535, got {value}")


def _check_mark(_inst: Any, attr: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= _MAX_MARK:
        raise ValueError(f"{attr.name} must be in 1..{_MAX_MARK:#x}, got {value}")


def _check_route_table(_inst: Any, attr: attrs.Attribute[int], value: int) -> None:
    if not 1 <= value <= _MAX_MARK or value in _RESERVED_ROUTE_TABLES:
        raise ValueError(f"{attr.name} must be a free table id (not 253-255), got {value}")


def _check_interfaces(
    _inst: Any, attr: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for name in value:
        if not _IFNAME.fullmatch(name):
            raise ValueError(f"{attr.name}: {name!r} is not a valid interface name")


def _cidr_checker(version: int) -> Any:
    def check(_inst: Any, attr: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]) -> None:
        for cidr in value:
            try:
                network = ipaddress.ip_network(cidr)
            except ValueError as exc:
                raise ValueError(f"{attr.name}: {exc}") from exc
            if network.version != version:
                raise ValueError(f"{attr.name}: {cidr} is not an IPv{version} network")

    return check


@attrs.frozen(kw_only=True)
class DiversionPlan:
    """Which packets the gateway hands to the proxy, and how.

    Everything entering on `lan_interfaces` (any interface when empty) is diverted to
    the TPROXY port (TCP and/or UDP) and/or REDIRECTed (TCP) — except packets already
    carrying `proxy_mark`, packets for the gateway itself, and destinations in the
    bypass sets.  TPROXY'd packets get `fwmark`, which `ip rule` sends to
    `route_table`, whose only route delivers everything locally.
    """

    tproxy_port: int | None = attrs.field(validator=_check_port)
    bypass_v4: tuple[str, ...] = attrs.field(converter=_str_tuple, validator=_cidr_checker(4))
    bypass_v6: tuple[str, ...] = attrs.field(converter=_str_tuple, validator=_cidr_checker(6))
    table: str = attrs.field(default="trio_tproxy", validator=_check_identifier)
    tproxy_tcp: bool = True
    tproxy_udp: bool = True
    redirect_port: int | None = attrs.field(default=None, validator=_check_port)
    fwmark: int = attrs.field(default=1, validator=_check_mark)
    route_table: int = attrs.field(default=100, validator=_check_route_table)
    proxy_mark: int = attrs.field(default=255, validator=_check_mark)
    lan_interfaces: tuple[str, ...] = attrs.field(
        default=(), converter=_str_tuple, validator=_check_interfaces
    )
    priority_mangle: int = -150
    priority_nat: int = -100

    def __attrs_post_init__(self) -> None:
        if self.fwmark == self.proxy_mark:
            # The proxy's own packets would be routed straight back into it.
            raise ValueError(f"fwmark and proxy_mark must differ, both are {self.fwmark}")
        if self.redirect_port is not None and "tcp" in self.tproxy_protocols:
            # TPROXY (mangle) would steer the packet and REDIRECT (dstnat) would then
            # rewrite its destination: neither listener would see a sane flow.
            raise ValueError("TCP cannot be both TPROXY'd and REDIRECTed; set tproxy_tcp=False")

    @property
    def tproxy_protocols(self) -> tuple[str, ...]:
        """The L4 protocols TPROXY'd, in rule order; empty when TPROXY is off."""
        if self.tproxy_port is None:
            return ()
        wanted = (("tcp", self.tproxy_tcp), ("udp", self.tproxy_udp))
        return tuple(proto for proto, on in wanted if on)
