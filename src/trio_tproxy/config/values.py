"""Value types of the configuration file and their parsers.

Pure: these turn the strings a user writes (``"300ms"``, ``"53,443,1000-2000"``,
``"192.0.2.10:1080"``) into typed, validated values. Every parser raises
:class:`BadValue` with a message meant for the user.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from .errors import BadValue

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


@attrs.frozen(order=True)
class Duration:
    """A span of time, written with a unit: ``"300ms"``, ``"5s"``, ``"2m"``, ``"1m30s"``."""

    seconds: float

    @classmethod
    def parse(cls, text: object) -> Duration:
        if isinstance(text, bool) or not isinstance(text, str):
            raise BadValue(
                f'durations are strings with a unit (ms, s, m, h), e.g. "300ms"; got {text!r}'
            )
        raw = text.strip()
        pos, total = 0, 0.0
        for m in _DURATION_PART.finditer(raw):
            if m.start() != pos:
                break
            total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
            pos = m.end()
        if pos == 0 or pos != len(raw):
            raise BadValue(f'bad duration {text!r}: expected a number with a unit, e.g. "5s"')
        return cls(total)

    def __str__(self) -> str:
        if self.seconds < 1:
            return f"{self.seconds * 1000:g}ms"
        return f"{self.seconds:g}s"


@attrs.frozen
class PortRanges:
    """Closed port ranges, written ``"53,443,1000-2000"`` or as a single number."""

    ranges: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, value: object) -> PortRanges:
        if isinstance(value, bool):
            raise BadValue(f"bad port list {value!r}")
        if isinstance(value, int):
            return cls(((_port(value, value), _port(value, value)),))
        if not isinstance(value, str):
            raise BadValue(f'bad port list {value!r}: expected "53,443,1000-2000" or a number')
        ranges = []
        for part in value.split(","):
            lo_text, sep, hi_text = part.strip().partition("-")
            try:
                lo = int(lo_text)
                hi = int(hi_text) if sep else lo
            except ValueError:
                where = "" if part.strip() == value.strip() else f" in {value!r}"
                raise BadValue(f"bad port range {part.strip()!r}{where}") from None
            if not (0 <= lo <= 65535 and 0 <= hi <= 65535) or lo > hi:
                raise BadValue(f"bad port range {part.strip()!r}: ports are 0-65535, low-high")
            ranges.append((lo, hi))
        return cls(tuple(ranges))

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and any(lo <= port <= hi for lo, hi in self.ranges)

    def __str__(self) -> str:
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in self.ranges)


def _port(value: int, text: object) -> int:
    if not 0 <= value <= 65535:
        raise BadValue(f"bad port {text!r}: ports are 0-65535")
    return value


@attrs.frozen
class HostPort:
    """``host:port`` where host is an IP literal (IPv6 in brackets) or a host name."""

    host: str
    port: int

    @classmethod
    def parse(cls, value: object, default_port: int | None = None) -> HostPort:
        if not isinstance(value, str) or not value:
            raise BadValue(f'expected "host:port", got {value!r}')
        host, port_text = value, ""
        if value.startswith("["):
            end = value.find("]")
            if end < 0:
                raise BadValue(f"bad address {value!r}: unclosed '['")
            host, rest = value[1:end], value[end + 1 :]
            if rest and not rest.startswith(":"):
                raise BadValue(f"bad address {value!r}")
            port_text = rest[1:]
        elif value.count(":") == 1:
            host, port_text = value.split(":")
        elif value.count(":") > 1:
            raise BadValue(f'bad address {value!r}: write IPv6 addresses as "[::1]:53"')
        if not port_text:
            if default_port is None:
                raise BadValue(f'bad address {value!r}: a port is required ("host:port")')
            port = default_port
        else:
            try:
                port = int(port_text)
            except ValueError:
                raise BadValue(f"bad port in {value!r}") from None
        if not 1 <= port <= 65535:
            raise BadValue(f"bad port in {value!r}: ports are 1-65535")
        if not host:
            raise BadValue(f"bad address {value!r}: empty host")
        return cls(host, port)

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise BadValue(f"bad IP address {value!r}") from None


def parse_cidr(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """An address or CIDR; host bits must be zero (``10.0.0.1/8`` is a typo, not a net)."""
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        raise BadValue(f"bad CIDR {value!r}: {exc}") from None


GEOIP_CODE = re.compile(r"[A-Za-z]{2}|private")  # what a MaxMind DB can answer
# A geoip.dat holds other lists too (geoip:telegram): checked against geodata (checks.py)
GEOIP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!_-]*")
GEOSITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!_-]*(@-?[A-Za-z0-9_!-]+)*")
DOMAIN_PREFIXES = (
    "full:", "domain:", "keyword:", "regexp:", "geosite:", "dotless:", "ext:", "ext-domain:",
)  # fmt: skip
BAD_GEOIP = "bad geoip entry {!r}: expected geoip:CC, geoip:!CC or geoip:private"


def _check_ext(entry: str, kind: str, value: str, name: re.Pattern[str]) -> str:
    """v2ray's ``ext:FILE:TAG``: list TAG of the .dat FILE (in the asset directory)."""
    file, _, tag = value.rpartition(":")
    if not file or not name.fullmatch(tag):
        raise BadValue(f"bad {kind} entry {entry!r}: expected {kind}:FILE.dat:TAG")
    return entry


def check_ip_entry(entry: str) -> str:
    """An ``ip`` / ``source`` / ``bypass`` / ``expect_ips`` entry: CIDR, IP, ``geoip:``
    or ``ext:FILE:TAG`` / ``ext-ip:FILE:TAG`` (``!TAG``: every address not in it)."""
    kind, sep, value = entry.partition(":")
    kind = kind.lower()
    if sep and kind == "geoip":
        if not GEOIP_NAME.fullmatch(value.removeprefix("!")):
            raise BadValue(BAD_GEOIP.format(entry))
        return entry
    if sep and kind in ("ext", "ext-ip"):
        return _check_ext(entry, kind, value.replace(":!", ":"), GEOIP_NAME)
    parse_cidr(entry)
    return entry


def check_domain_entry(entry: str) -> str:
    """A routing ``domain`` entry in v2ray syntax; regexps must compile."""
    if not entry:
        raise BadValue("empty domain entry")
    lowered = entry.lower()
    if lowered.startswith("regexp:"):
        try:
            re.compile(entry[len("regexp:") :])
        except re.error as exc:
            raise BadValue(f"bad regexp {entry!r}: {exc}") from None
    elif lowered.startswith("geosite:"):
        if not GEOSITE_NAME.fullmatch(entry[len("geosite:") :]):
            raise BadValue(f"bad geosite entry {entry!r}: expected geosite:NAME[@attr]")
    elif lowered.startswith(("ext:", "ext-domain:")):
        kind, _, value = entry.partition(":")
        _check_ext(entry, kind.lower(), value, GEOSITE_NAME)
    elif lowered.startswith(("full:", "domain:", "keyword:", "dotless:")):
        prefix, _, value = entry.partition(":")
        if not value and prefix.lower() != "dotless":
            raise BadValue(f"empty value in domain entry {entry!r}")
    elif ":" in entry:
        # typos like "domian:x" and "ext-ip:f:x" must not pass as a substring match
        raise BadValue(
            f"unknown domain entry prefix in {entry!r}: expected one of "
            + ", ".join(DOMAIN_PREFIXES)
        )
    return entry
