"""Linux capabilities: which ones this process holds, which ones a config needs.

A gateway run as its own user (``trio-tproxy service print``) holds exactly three:

- ``CAP_NET_ADMIN``: IP_TRANSPARENT, SO_MARK, nftables and policy routes;
- ``CAP_NET_RAW``: raw reply packets (the UDP reply fallback, udp/rawsend.py); the
  kernel accepts it for IP_TRANSPARENT too (net/ipv4/ip_sockglue.c checks either);
- ``CAP_NET_BIND_SERVICE``: ports below ``net.ipv4.ip_unprivileged_port_start``
  (1024 unless lowered; one setting per network namespace, for IPv6 too).

``run`` compares the effective set (``CapEff`` of /proc/self/status) with what the
config needs before it binds anything, so a missing capability ends the start in one
line that names it and what needs it instead of failing half-way. The socket helpers
also translate an EPERM/EACCES at the moment it happens with :func:`missing_line`
(a capability can be held and still refused, e.g. in a network namespace owned by
another user namespace). Reads /proc only; imports nothing but the config schema.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs

from .config.schema import Config, TproxyInbound

CAP_NET_BIND_SERVICE = 10  # linux/capability.h
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
NAMES = {
    CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE",
    CAP_NET_ADMIN: "CAP_NET_ADMIN",
    CAP_NET_RAW: "CAP_NET_RAW",
}
# The three the systemd unit grants, in the order `service print` lists them.
GATEWAY_CAPABILITIES = (CAP_NET_ADMIN, CAP_NET_RAW, CAP_NET_BIND_SERVICE)
DEFAULT_PORT_START = 1024  # the kernel's default ip_unprivileged_port_start
_STATUS = Path("/proc/self/status")
_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
_ADVICE = "run as root, or grant it (AmbientCapabilities= in the unit `service print` writes)"


@attrs.frozen
class Need:
    """One thing the config does that takes a capability (or any of ``also``)."""

    capability: int
    purpose: str  # "IP_TRANSPARENT on inbound 'tproxy-in' (port 12345)"
    also: tuple[int, ...] = ()  # other capabilities the kernel accepts instead

    def met_by(self, mask: int) -> bool:
        return any(mask >> cap & 1 for cap in (self.capability, *self.also))


def parse_mask(status: str, field: str = "CapEff") -> int | None:
    """The capability mask ``field`` of a /proc/PID/status text, or None."""
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key == field:
            try:
                return int(value.strip(), 16)
            except ValueError:
                return None
    return None


def effective(status: Path = _STATUS) -> int | None:
    """This process's effective capabilities; None when /proc cannot tell."""
    try:
        return parse_mask(status.read_text())
    except OSError:
        return None


def has(capability: int, status: Path = _STATUS) -> bool:
    mask = effective(status)
    return mask is not None and bool(mask >> capability & 1)


def names(mask: int) -> list[str]:
    """The names of the capabilities in ``mask`` that a gateway cares about."""
    return [NAMES[cap] for cap in GATEWAY_CAPABILITIES if mask >> cap & 1]


def unprivileged_port_start(path: Path = _PORT_START) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return DEFAULT_PORT_START


def needs(cfg: Config, port_start: int = DEFAULT_PORT_START) -> list[Need]:
    """What ``run`` will do with ``cfg`` that takes a capability, in start-up order."""
    found: list[Need] = []
    for ib in cfg.inbounds:
        where = f"inbound {ib.tag!r} (port {ib.port})"
        if isinstance(ib, TproxyInbound):
            found.append(Need(CAP_NET_ADMIN, f"IP_TRANSPARENT on {where}", also=(CAP_NET_RAW,)))
            if "udp" in ib.network:
                found.append(Need(CAP_NET_RAW, f"raw reply packets (UDP) of {where}"))
        if ib.mark:
            found.append(Need(CAP_NET_ADMIN, f"SO_MARK={ib.mark} on the replies of {where}"))
        if ib.port < port_start:
            found.append(Need(CAP_NET_BIND_SERVICE, f"port {ib.port} of {where}"))
    for ob in cfg.outbounds:
        mark = getattr(ob, "mark", 0)
        if mark:
            found.append(Need(CAP_NET_ADMIN, f"SO_MARK={mark} on outbound {ob.tag!r}"))
    for listen in cfg.dns.listen:
        if listen.port < port_start:
            found.append(Need(CAP_NET_BIND_SERVICE, f"port {listen.port} of dns.listen"))
    if cfg.firewall.auto:
        found.append(Need(CAP_NET_ADMIN, "nft and ip rule for firewall.auto"))
    return found


def unmet(wanted: Iterable[Need], mask: int) -> list[Need]:
    return [need for need in wanted if not need.met_by(mask)]


def missing_line(capability: int, purposes: Iterable[str]) -> str:
    """``CAP_NET_ADMIN is missing: needed for A, B; run as root, or grant it ...``"""
    return f"{NAMES[capability]} is missing: needed for {', '.join(purposes)}; {_ADVICE}"


def bind_refusal(errno_: int, port: int, port_start: int | None = None) -> str | None:
    """Why a bind failed with EACCES, when the port is a privileged one; else None."""
    if port_start is None:
        port_start = unprivileged_port_start()
    if errno_ == errno.EACCES and port < port_start:
        return missing_line(CAP_NET_BIND_SERVICE, [f"port {port}"])
    return None


def refusals(cfg: Config) -> list[str]:
    """``run``'s check before it binds: one line per missing capability, or none."""
    mask = effective()
    if mask is None:  # no /proc: the socket calls will say it when they fail
        return []
    return list(missing_lines(unmet(needs(cfg, unprivileged_port_start()), mask)))


def by_capability(missing: Iterable[Need]) -> dict[int, list[str]]:
    """capability -> the purposes that need it, in the order first needed."""
    grouped: dict[int, list[str]] = {}
    for need in missing:
        grouped.setdefault(need.capability, []).append(need.purpose)
    return grouped


def missing_lines(missing: Iterable[Need]) -> Iterator[str]:
    """One line per capability, naming everything that needs it."""
    for cap, purposes in by_capability(missing).items():
        yield missing_line(cap, purposes)
