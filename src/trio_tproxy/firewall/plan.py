"""What the kernel should divert, and where: the input of every ruleset generator.

A `DiversionPlan` is a frozen description, validated on construction, so the
renderers (`firewall.nft`, `firewall.iptables`) can trust every field and simply
format it.  Validation matters beyond tidiness: interface, table and user names end up
inside an nft script or a shell command, so they are checked against what the kernel
accepts rather than quoted.  `firewall.from_config` builds a plan from the
configuration file.
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
# quotes would break out of the nft string.  A trailing '*' is nft's wildcard ("eth*").
_IFNAME = re.compile(r"[A-Za-z0-9_.:@+-]{1,15}\*?")
# nft identifiers as the config accepts them (config/checks.py): a letter or '_', then
# letters, digits, '_' and '-' -- all valid nft and iptables names, none needs quoting.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
# POSIX-ish user names (what useradd accepts) or a numeric uid.
USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?|[0-9]{1,10}")
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


def _check_marks(
    _inst: Any, attr: attrs.Attribute[tuple[int, ...]], value: tuple[int, ...]
) -> None:
    for mark in value:
        if not 1 <= mark <= _MAX_MARK:
            raise ValueError(f"{attr.name}: {mark} is not in 1..{_MAX_MARK:#x}")


def _check_users(
    _inst: Any, attr: attrs.Attribute[tuple[str, ...]], value: tuple[str, ...]
) -> None:
    for name in value:
        if not USER_NAME.fullmatch(name):
            raise ValueError(f"{attr.name}: {name!r} is not a user name or uid")


def _check_address(_inst: Any, attr: attrs.Attribute[str], value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f"{attr.name}: {exc}") from exc


def _mark_tuple(value: int | Iterable[int]) -> tuple[int, ...]:
    """One mark or several; kept sorted and unique so the rendering is canonical."""
    return (value,) if isinstance(value, int) else tuple(sorted(set(value)))


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
    the TPROXY port (TCP and/or UDP) and/or REDIRECTed (TCP) -- except packets carrying
    one of `proxy_marks`, packets for the gateway itself, and destinations in the
    bypass sets.  TPROXY'd packets get `fwmark`, which `ip rule` sends to
    `route_table`, whose only route delivers everything locally.

    `local` (mode = "local") also diverts the gateway's own traffic: an output chain
    marks it with `fwmark` (except the proxy's marks and `skip_users`), the policy
    routing turns it around through `lo`, and prerouting diverts it from there.
    `fail_closed` drops what should have been TPROXY'd but found no listener.
    """

    tproxy_port: int | None = attrs.field(validator=_check_port)
    bypass_v4: tuple[str, ...] = attrs.field(converter=_str_tuple, validator=_cidr_checker(4))
    bypass_v6: tuple[str, ...] = attrs.field(converter=_str_tuple, validator=_cidr_checker(6))
    table: str = attrs.field(default="trio_tproxy", validator=_check_identifier)
    tproxy_tcp: bool = True
    tproxy_udp: bool = True
    # A separate UDP inbound's port (None: UDP goes to tproxy_port as well).
    udp_port: int | None = attrs.field(default=None, validator=_check_port)
    # The listener's own address when it is bound to one ("tproxy ip to A:P"); None for
    # a wildcard listener, found through the incoming interface's address.
    tcp_address: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(_check_address)
    )
    udp_address: str | None = attrs.field(
        default=None, validator=attrs.validators.optional(_check_address)
    )
    redirect_port: int | None = attrs.field(default=None, validator=_check_port)
    fwmark: int = attrs.field(default=1, validator=_check_mark)
    route_table: int = attrs.field(default=100, validator=_check_route_table)
    proxy_marks: tuple[int, ...] = attrs.field(
        default=(255,), converter=_mark_tuple, validator=_check_marks
    )
    lan_interfaces: tuple[str, ...] = attrs.field(
        default=(), converter=_str_tuple, validator=_check_interfaces
    )
    local: bool = False
    skip_users: tuple[str, ...] = attrs.field(
        default=(), converter=_str_tuple, validator=_check_users
    )
    fail_closed: bool = False
    ipv6: bool = True
    priority_mangle: int = -150
    priority_nat: int = -100

    def __attrs_post_init__(self) -> None:
        if self.fwmark in self.proxy_marks:
            # The proxy's own packets would be routed straight back into it.
            raise ValueError(f"fwmark and proxy_marks must differ, both have {self.fwmark}")
        if self.redirect_port is not None and "tcp" in self.tproxy_protocols:
            # TPROXY (mangle) would steer the packet and REDIRECT (dstnat) would then
            # rewrite its destination: neither listener would see a sane flow.
            raise ValueError("TCP cannot be both TPROXY'd and REDIRECTed; set tproxy_tcp=False")
        if self.local and not (self.proxy_marks or self.skip_users):
            # Nothing would tell the proxy's own upstream traffic from the traffic it
            # should divert: every upstream connection would come straight back.
            raise ValueError("local mode needs proxy_marks or skip_users, or the proxy loops")

    @property
    def tproxy_protocols(self) -> tuple[str, ...]:
        """The L4 protocols TPROXY'd, in rule order; empty when TPROXY is off."""
        if self.tproxy_port is None:
            return ()
        wanted = (("tcp", self.tproxy_tcp), ("udp", self.tproxy_udp))
        return tuple(proto for proto, on in wanted if on)

    def tproxy_target(self, protocol: str) -> tuple[int, str | None]:
        """(port, listener address or None) where TPROXY sends `protocol`."""
        if self.tproxy_port is None:
            raise ValueError("this plan TPROXYs nothing")
        if protocol == "udp":
            return self.udp_port or self.tproxy_port, self.udp_address
        return self.tproxy_port, self.tcp_address

    @property
    def families(self) -> tuple[int, ...]:
        """The IP versions diverted (and given policy routing)."""
        return (4, 6) if self.ipv6 else (4,)
