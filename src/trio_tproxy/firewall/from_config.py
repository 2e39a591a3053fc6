"""The diversion plan for a configuration file: pure, config in, `DiversionPlan` out.

What the plan takes from where:

- TCP goes to the first `tproxy` inbound serving TCP, else to the first `redirect`
  inbound; UDP to the first `tproxy` inbound serving UDP.  Further inbounds are
  listeners for rules written by hand, which nothing here diverts to.
- The proxy's own marks are every non-zero `mark` of the outbounds (upstream sockets)
  and inbounds (sockets answering clients): packets carrying one are never diverted.
- `bypass` uses the routing `ip` syntax; `geoip:CC` is resolved through the GeoIP
  database (or `geodata.geoip_dat`) into CIDRs, `geoip:private` is the built-in
  reserved list (or the geoip.dat's PRIVATE).
- The rest is `[firewall]` field by field (mode, lan_interfaces, fwmark, route_table,
  table, priority, skip_users, ipv6, fail_closed).

Combinations that would leak or loop are refused with a path, like every config error:
an IPv4-only listener while IPv6 is diverted (IPv6 would find no listener), an inbound
whose mark is the fwmark (its replies would be routed back to lo), an outbound without a
mark in local mode (its upstream connections would come straight back).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Iterable, Iterator, Sequence

from ..config.errors import ConfigError, ConfigErrors
from ..config.schema import Config, Inbound, RedirectInbound, TproxyInbound
from ..config.values import parse_cidr
from ..geo import GeoData, GeoipError, Ranges, ip_list_name
from ..geo.geoip import complement, merge_ranges
from .plan import USER_NAME, DiversionPlan

_V4_TOP = (1 << 32) - 1
_V6_TOP = (1 << 128) - 1


def plan_from_config(
    cfg: Config, geo: GeoData | None = None, *, resolve_bypass: bool = True
) -> DiversionPlan:
    """The plan `trio-tproxy firewall` applies for ``cfg``; raises ConfigErrors.

    ``resolve_bypass=False`` leaves the bypass sets empty (no GeoIP database needed):
    enough to remove a ruleset, which is found by table name, fwmark and route table.
    """
    fw = cfg.firewall
    errors: list[ConfigError] = []
    tcp = _first(cfg, TproxyInbound, "tcp")
    udp = _first(cfg, TproxyInbound, "udp")
    redirect = None if tcp is not None else _first(cfg, RedirectInbound, "tcp")
    addresses: dict[str, str | None] = {}
    reported: set[int] = set()  # one inbound may serve TCP and UDP: one error
    for proto, found in (("tcp", tcp), ("udp", udp), ("redirect", redirect)):
        if found is not None:
            index, inbound = found
            address, problem = _listener_address(inbound, ipv6=fw.ipv6)
            addresses[proto] = address
            if problem and index not in reported:
                reported.add(index)
                errors.append(ConfigError(problem, f"$.inbounds[{index}].listen"))
    errors += _mark_errors(cfg)
    errors += [
        ConfigError(f"{user!r} is not a user name or uid", f"$.firewall.skip_users[{i}]")
        for i, user in enumerate(fw.skip_users)
        if not USER_NAME.fullmatch(user)
    ]
    bypass_v4: tuple[str, ...] = ()
    bypass_v6: tuple[str, ...] = ()
    if resolve_bypass:
        try:
            bypass_v4, bypass_v6 = resolve_ip_entries(
                fw.bypass, geo or GeoData.load(cfg.geodata), "$.firewall.bypass"
            )
        except ConfigErrors as exc:
            errors += exc.errors
    if errors:
        raise ConfigErrors(errors)
    try:
        return DiversionPlan(
            tproxy_port=tcp[1].port if tcp else udp[1].port if udp else None,
            tproxy_tcp=tcp is not None,
            tproxy_udp=udp is not None,
            udp_port=udp[1].port if udp else None,
            tcp_address=addresses.get("tcp"),
            udp_address=addresses.get("udp"),
            redirect_port=redirect[1].port if redirect else None,
            bypass_v4=bypass_v4,
            bypass_v6=bypass_v6,
            table=fw.table,
            fwmark=fw.fwmark,
            route_table=fw.route_table,
            proxy_marks=proxy_marks(cfg),
            lan_interfaces=fw.lan_interfaces,
            local=fw.mode == "local",
            skip_users=fw.skip_users,
            fail_closed=fw.fail_closed,
            ipv6=fw.ipv6,
            priority_mangle=fw.priority,
        )
    except ValueError as exc:  # the schema's checks should have caught it; still a path
        raise ConfigErrors([ConfigError(str(exc), "$.firewall")]) from None


def proxy_marks(cfg: Config) -> tuple[int, ...]:
    """The marks the proxy's own sockets carry (0 = none), sorted."""
    marks = {getattr(b, "mark", 0) for b in (*cfg.inbounds, *cfg.outbounds)}
    return tuple(sorted(marks - {0}))


def _first(
    cfg: Config, kind: type[TproxyInbound] | type[RedirectInbound], network: str
) -> tuple[int, Inbound] | None:
    for index, inbound in enumerate(cfg.inbounds):
        if isinstance(inbound, kind) and network in inbound.network:
            return index, inbound
    return None


def _listener_address(inbound: Inbound, *, ipv6: bool) -> tuple[str | None, str | None]:
    """(the address `tproxy` must name, or None for a wildcard; a problem, or None)."""
    ip = ipaddress.ip_address(inbound.listen)
    if ip.version == 6 and ip.is_unspecified:
        return None, None  # dual stack: the listener takes both families
    if ip.version == 6:
        return None, (
            f'listens on {ip} only, so IPv4 traffic would find no listener; use "::" '
            "for trio-tproxy firewall"
        )
    if ipv6:
        return None, (
            f"listens on IPv4 only ({ip}), so diverted IPv6 traffic would find no listener: "
            'listen on "::" or set firewall.ipv6 = false'
        )
    if ip.is_unspecified:
        return None, None
    if isinstance(inbound, RedirectInbound):
        # REDIRECT rewrites the destination to the incoming interface's address.
        return None, 'a redirect inbound must listen on a wildcard address ("::" or "0.0.0.0")'
    return str(ip), None


def _mark_errors(cfg: Config) -> Iterator[ConfigError]:
    fw = cfg.firewall
    for index, inbound in enumerate(cfg.inbounds):
        if inbound.mark == fw.fwmark:
            yield ConfigError(
                f"mark {inbound.mark} equals firewall.fwmark: replies to clients would be "
                "routed back into the gateway",
                f"$.inbounds[{index}].mark",
            )
    if fw.mode != "local" or fw.skip_users:
        return
    for index, outbound in enumerate(cfg.outbounds):
        if getattr(outbound, "mark", None) == 0:
            yield ConfigError(
                f'outbound {outbound.tag!r} has no mark: with firewall.mode = "local" its '
                "connections would be diverted back into the proxy (set a mark such as 255, "
                "or firewall.skip_users)",
                f"$.outbounds[{index}].mark",
            )


def resolve_ip_entries(
    entries: Sequence[str], geo: GeoData, path: str
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Routing-syntax ip entries -> (IPv4 CIDRs, IPv6 CIDRs), merged, sorted, minimal.

    Same meaning as in routing rules: CIDR or address, `geoip:CC`, `geoip:!CC`,
    `geoip:private`, and with a geoip.dat its names (`geoip:telegram`) and
    `ext-ip:FILE:TAG`.  Raises ConfigErrors naming ``path[i]``.
    """
    codes = set()
    for entry in entries:
        with contextlib.suppress(ValueError):  # reported per entry below
            if (listed := ip_list_name(entry)) is not None:
                codes.add(listed[0])
    with contextlib.suppress(GeoipError):  # reported per entry below
        geo.prefetch_countries(codes)
    v4: Ranges = []
    v6: Ranges = []
    errors = []
    for i, entry in enumerate(entries):
        try:
            r4, r6 = _entry_ranges(entry, geo)
        except (GeoipError, ValueError) as exc:  # ValueError: BadValue, a bad ext: entry
            errors.append(ConfigError(str(exc), f"{path}[{i}]"))
            continue
        v4 += r4
        v6 += r6
    if errors:
        raise ConfigErrors(errors)
    return _cidrs(merge_ranges(v4), 4), _cidrs(merge_ranges(v6), 6)


def _entry_ranges(entry: str, geo: GeoData) -> tuple[Ranges, Ranges]:
    if (listed := ip_list_name(entry)) is not None:
        name, inverse = listed
        v4, v6 = geo.country_ranges(name)
        if inverse:
            return (complement(merge_ranges(list(v4)), _V4_TOP),
                    complement(merge_ranges(list(v6)), _V6_TOP))  # fmt: skip
        return list(v4), list(v6)
    net = parse_cidr(entry)
    span = [(int(net.network_address), int(net.broadcast_address))]
    return (span, []) if net.version == 4 else ([], span)


def _cidrs(ranges: Iterable[tuple[int, int]], version: int) -> tuple[str, ...]:
    address = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
    return tuple(
        str(net)
        for lo, hi in ranges
        for net in ipaddress.summarize_address_range(address(lo), address(hi))
    )
