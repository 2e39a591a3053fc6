"""``trio-tproxy geodata build``: a country MaxMind DB from free IP-range lists.

Accepted lines (``#`` comments and blank lines are skipped; formats may be mixed):

* Tor ``geoip`` (Debian's ``tor-geoipdb``, converted from the IPFire location database):
  ``INTIPLOW,INTIPHIGH,CC`` with IPv4 addresses as integers;
* Tor ``geoip6``: ``IPV6LOW,IPV6HIGH,CC``; dotted IPv4 ``LOW,HIGH,CC`` works as well;
* CSV: ``CIDR,CC`` (IPv4 or IPv6).

Country ``??`` (unknown) is skipped. Ranges are merged with their same-country
neighbours, cut into the fewest CIDR blocks and written with one shared data record
``{"country": {"iso_code": CC}}`` per country, which is what GeoLite2-Country and
DB-IP readers look up. Overlapping ranges of different countries are an error: a
database that answers differently depending on lookup order helps nobody.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import attrs

from .geoip import RANGE_INDEX_KEY, pack_ranges
from .mmdb_writer import V4_IN_V6, write_mmdb

__all__ = ["BuildStats", "GeodataBuildError", "build_country_mmdb", "range_to_cidrs"]

MAX_REPORTED_PROBLEMS = 50  # a wrong file would otherwise print a million lines
_COUNTRY = re.compile(r"[A-Z]{2}")
_UNKNOWN_COUNTRY = "??"


class GeodataBuildError(Exception):
    """Bad source lines or unreadable files; ``problems`` are ``file:line: message``."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


@attrs.frozen
class BuildStats:
    ipv4_ranges: int
    ipv6_ranges: int
    networks: int
    countries: int
    node_count: int
    record_size: int
    bytes: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"{self.countries} countries, {self.ipv4_ranges} IPv4 + {self.ipv6_ranges} IPv6 "
            f"ranges -> {self.networks} networks, {self.node_count} nodes "
            f"({self.record_size}-bit records), {self.bytes} bytes in {self.seconds:.1f}s"
        )


class _Range(NamedTuple):  # a named tuple: a full Tor file makes 660,000 of these
    version: int
    low: int
    high: int
    country: str
    where: str  # "file:line", for overlap errors


_PLAIN_IPV6 = re.compile(r"(?:[0-9A-Fa-f]{1,4}|:)(?::[0-9A-Fa-f]{0,4}){1,8}")


def _fast_ipv6(text: str) -> int | None:
    """Plain hex IPv6 (no embedded IPv4) ~10x faster than ipaddress; None = ask that."""
    if not _PLAIN_IPV6.fullmatch(text):
        return None
    head, sep, tail = text.partition("::")
    parts = head.split(":") if head else []
    rest = tail.split(":") if tail else []
    missing = 8 - len(parts) - len(rest)
    if "::" in tail or "" in parts or "" in rest or (missing < 1 if sep else missing != 0):
        return None
    return int("".join(p.zfill(4) for p in (*parts, *["0"] * missing, *rest)), 16)


def _parse_address(text: str) -> tuple[int, int]:
    if text.isascii() and text.isdigit():
        value = int(text)
        if value >= 1 << 32:
            raise ValueError(f"IPv4 integer {text} out of range")
        return 4, value
    if ":" in text and (fast := _fast_ipv6(text)) is not None:
        return 6, fast
    addr = ipaddress.ip_address(text)
    return addr.version, int(addr)


def _parse_row(fields: list[str], where: str) -> _Range | None:
    country = fields[-1].upper()
    if country == _UNKNOWN_COUNTRY:
        return None
    if not _COUNTRY.fullmatch(country):
        raise ValueError(f"bad country code {fields[-1]!r}")
    if len(fields) == 2:
        net = ipaddress.ip_network(fields[0], strict=True)
        return _Range(
            net.version, int(net.network_address), int(net.broadcast_address), country, where
        )
    (v_low, low), (v_high, high) = _parse_address(fields[0]), _parse_address(fields[1])
    if v_low != v_high:
        raise ValueError("range mixes IPv4 and IPv6")
    if low > high:
        raise ValueError("range ends before it starts")
    return _Range(v_low, low, high, country, where)


def _read_source(path: Path, problems: list[str]) -> Iterator[_Range]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path}: cannot read: {exc}")
        return
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(",")
        if " " in line or "\t" in line:
            fields = [f.strip() for f in fields]
        where = f"{path}:{number}"
        if len(fields) not in (2, 3):
            problems.append(f"{where}: expected LOW,HIGH,CC or CIDR,CC")
            continue
        try:
            parsed = _parse_row(fields, where)
        except ValueError as exc:
            problems.append(f"{where}: {exc}")
            continue
        if parsed is not None:
            yield parsed


def _merge(ranges: list[_Range], problems: list[str]) -> list[_Range]:
    ranges.sort(key=lambda r: (r.version, r.low))
    merged: list[_Range] = []
    for r in ranges:
        last = merged[-1] if merged else None
        if last is None or last.version != r.version or r.low > last.high + 1:
            merged.append(r)
        elif r.country != last.country:
            if r.low <= last.high:
                problems.append(f"{r.where}: overlaps {last.where} ({last.country})")
            else:
                merged.append(r)
        elif r.high > last.high:
            merged[-1] = last._replace(high=r.high)
    return merged


def _range_index(merged: list[_Range]) -> list[dict[str, Any]]:
    """Every country's ranges, packed in chunks: lets routing extract a country in
    milliseconds instead of walking the whole tree (see geoip.CountryDB.extract)."""
    by_key: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for r in merged:
        by_key.setdefault((r.country, r.version), []).append((r.low, r.high))
    return [
        {RANGE_INDEX_KEY: {"cc": cc, "ip_version": version, "ranges": chunk}}
        for (cc, version), ranges in sorted(by_key.items())
        for chunk in pack_ranges(ranges, 4 if version == 4 else 16)
    ]


def range_to_cidrs(low: int, high: int, bits: int) -> Iterator[tuple[int, int]]:
    """The fewest ``(start, prefix)`` blocks covering ``low..high`` in a ``bits`` space."""
    while low <= high:
        size = (high - low + 1).bit_length() - 1
        if low:
            size = min(size, (low & -low).bit_length() - 1)
        yield low, bits - size
        low += 1 << size


def build_country_mmdb(sources: Sequence[Path], output: Path) -> BuildStats:
    """Build ``output`` from Tor geoip/geoip6 files and ``cidr,cc`` CSVs.

    Raises :class:`GeodataBuildError` (nothing is written) if any line is bad; the file
    is written to a temporary name and renamed, so a reader never sees half a database.
    """
    began = time.monotonic()
    problems: list[str] = []
    ranges = [r for path in sources for r in _read_source(Path(path), problems)]
    merged = _merge(ranges, problems)
    if problems:
        more = len(problems) - MAX_REPORTED_PROBLEMS
        shown = problems[:MAX_REPORTED_PROBLEMS]
        raise GeodataBuildError(shown + ([f"... and {more} more"] if more > 0 else []))
    countries = sorted({r.country for r in merged})
    index = {cc: i for i, cc in enumerate(countries)}
    networks: list[tuple[int, int, int]] = []
    for r in merged:
        bits, shift = (32, V4_IN_V6) if r.version == 4 else (128, 0)
        data = index[r.country]
        networks.extend((s, p + shift, data) for s, p in range_to_cidrs(r.low, r.high, bits))
    body, figures = write_mmdb(
        networks,
        [{"country": {"iso_code": cc}} for cc in countries],
        preamble=_range_index(merged),
        database_type="trio-tproxy-Country",
        description="Country database built by trio-tproxy geodata build from "
        + ", ".join(Path(s).name for s in sources),
    )
    tmp = output.with_name(output.name + ".tmp")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(body)
        tmp.replace(output)
    except OSError as exc:
        raise GeodataBuildError([f"{output}: cannot write: {exc}"]) from None
    return BuildStats(
        ipv4_ranges=sum(r.version == 4 for r in merged),
        ipv6_ranges=sum(r.version == 6 for r in merged),
        networks=len(networks),
        countries=len(countries),
        node_count=figures["node_count"],
        record_size=figures["record_size"],
        bytes=figures["bytes"],
        seconds=time.monotonic() - began,
    )
