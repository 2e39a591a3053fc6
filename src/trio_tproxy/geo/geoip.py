"""Country data from a MaxMind DB: single lookups, and whole-country range extraction.

Routing never asks the database per flow: at compile time the ranges of the countries
a configuration names are pulled out of the search tree into sorted integer ranges
(``route.ipset.IpSet``), and flows are matched by bisection. Lookups go through the
``maxminddb`` reader (``country.iso_code``, falling back to ``registered_country`` as
DB-IP and GeoLite2 both lay out). Extraction reads the per-country range index that
``trio-tproxy geodata build`` stores at the start of the data section (~20 ms for
``geoip:cn``); any other database has its tree walked here (~1 s of CPU for a full
country database; the reader's own iterator builds an ``ipaddress`` network per leaf and
takes ~10 s).

``geoip:private`` needs no database: :data:`PRIVATE_NETWORKS` are v2fly/geoip's
``plugin/special/private.go`` ranges, exactly as listed in reference section 3.
"""

from __future__ import annotations

import ipaddress
import sys
import zlib
from array import array
from collections.abc import Collection, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "PRIVATE_NETWORKS", "RANGE_INDEX_KEY", "CountryDB", "GeoipError", "Ranges", "merge_ranges",
    "pack_ranges", "private_ranges", "unpack_ranges", "unpack_tree",
]  # fmt: skip

Ranges = list[tuple[int, int]]  # sorted, disjoint, closed integer ranges of one family

PRIVATE_NETWORKS: tuple[str, ...] = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16",
    "172.16.0.0/12", "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16",
    "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "255.255.255.255/32", "::1/128", "fc00::/7", "fe80::/10", "ff00::/8",
)  # fmt: skip
_METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
# Databases built by `trio-tproxy geodata build` start their data section with items
# {RANGE_INDEX_KEY: {"cc": CC, "ip_version": 4|6, "ranges": packed}}, a country's ranges
# in chunks, which no lookup ever reaches (each item stays under readers' 2 MiB limit).
RANGE_INDEX_KEY = "trio_tproxy_country_ranges"
_V4_IN_V6_DEPTH = 96


def _maxminddb() -> ModuleType:
    """maxminddb, imported on first use: it pulls in ``socket`` (through importlib.metadata
    and email.utils), and geo/ must not, for configurations that name no country."""
    import maxminddb  # noqa: PLC0415
    import maxminddb.decoder  # noqa: PLC0415

    return maxminddb


class GeoipError(Exception):
    """The database is missing, unreadable or not a MaxMind DB."""


def merge_ranges(ranges: list[tuple[int, int]]) -> Ranges:
    """Sort and join overlapping or adjacent ranges."""
    out: Ranges = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def complement(ranges: Iterable[tuple[int, int]], top: int) -> Ranges:
    """The gaps between sorted, non-overlapping ``ranges`` within ``0..top``."""
    out, at = [], 0
    for lo, hi in ranges:
        if lo > at:
            out.append((at, lo - 1))
        at = hi + 1
    if at <= top:
        out.append((at, top))
    return out


def private_ranges() -> tuple[Ranges, Ranges]:
    v4: Ranges = []
    v6: Ranges = []
    for text in PRIVATE_NETWORKS:
        net = ipaddress.ip_network(text)
        (v4 if net.version == 4 else v6).append(
            (int(net.network_address), int(net.broadcast_address))
        )
    return merge_ranges(v4), merge_ranges(v6)


def _iso_code(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    for key in ("country", "registered_country"):
        part = record.get(key)
        if isinstance(part, dict) and isinstance(part.get("iso_code"), str):
            return str(part["iso_code"]).upper()
    return None


PACKED_CHUNK = 16384  # ranges per chunk: a chunk stays far below readers' 2 MiB value limit


def pack_ranges(ranges: list[tuple[int, int]], width: int) -> list[bytes]:
    """Chunks of zlib'ed big-endian ``low, high`` pairs, ``width`` bytes each (4 or 16)."""
    return [
        zlib.compress(
            b"".join(
                lo.to_bytes(width, "big") + hi.to_bytes(width, "big")
                for lo, hi in ranges[i : i + PACKED_CHUNK]
            )
        )
        for i in range(0, len(ranges), PACKED_CHUNK)
    ]


def unpack_ranges(blob: bytes, width: int) -> Ranges:
    raw = zlib.decompress(blob)
    if len(raw) % (2 * width):
        raise ValueError("truncated range chunk")
    if width == 4:
        values = array("I", raw)
        if sys.byteorder == "little":
            values.byteswap()
        flat = values.tolist()
    else:
        flat = [int.from_bytes(raw[i : i + width], "big") for i in range(0, len(raw), width)]
    return list(zip(flat[0::2], flat[1::2], strict=True))


def unpack_tree(tree: bytes, node_count: int, record_size: int) -> tuple[array[int], array[int]]:
    """Left and right records of every node, unpacked at C speed via 32-bit arrays
    (the inverse of ``mmdb_writer.pack_tree``)."""
    n = node_count
    if len(tree) != n * record_size // 4:
        raise ValueError("search tree size does not match the metadata")
    view = memoryview(tree)
    lb, rb = bytearray(4 * n), bytearray(4 * n)
    if record_size == 32:
        for i in range(4):
            lb[i::4], rb[i::4] = view[i::8], view[4 + i :: 8]
    elif record_size == 24:
        for i in range(3):
            lb[1 + i :: 4], rb[1 + i :: 4] = view[i::6], view[3 + i :: 6]
    elif record_size == 28:
        for i in range(3):
            lb[1 + i :: 4], rb[1 + i :: 4] = view[i::7], view[4 + i :: 7]
        middle = bytes(view[3::7])
        lb[0::4] = middle.translate(bytes(b >> 4 for b in range(256)))
        rb[0::4] = middle.translate(bytes(b & 0x0F for b in range(256)))
    else:
        raise ValueError(f"unsupported record size {record_size}")
    left, right = array("I", lb), array("I", rb)
    if sys.byteorder == "little":
        left.byteswap()
        right.byteswap()
    return left, right


class CountryDB:
    """One MaxMind DB file, opened for lookups and range extraction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        mmdb = _maxminddb()
        self._invalid: type[Exception] = mmdb.InvalidDatabaseError
        try:
            self._buf = path.read_bytes()
            self._reader = mmdb.open_database(str(path), mmdb.MODE_MEMORY)
            meta = self._reader.metadata()
        except (OSError, ValueError, mmdb.InvalidDatabaseError) as exc:
            raise GeoipError(f"cannot open MaxMind DB {path}: {exc}") from None
        self.node_count: int = meta.node_count
        self.record_size: int = meta.record_size
        self.ip_version: int = meta.ip_version
        self.database_type: str = meta.database_type
        self._tree_size = self.node_count * self.record_size // 4
        self._codes: dict[int, str] | None = None
        self._index: dict[tuple[str, int], list[bytes]] | None = None

    def lookup(self, ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        """The country code of one address (upper case), ``None`` if not in the DB."""
        try:
            return _iso_code(self._reader.get(ip))
        except ValueError:
            return None

    def record_codes(self) -> dict[int, str]:
        """Country code by record value, for every top-level item of the data section."""
        if self._codes is None:
            codes: dict[int, str] = {}
            end = self._buf.rfind(_METADATA_MARKER)
            decoder = _maxminddb().decoder.Decoder(self._buf, self._tree_size + 16)
            offset = self._tree_size + 16
            try:
                while offset < end:
                    value, next_offset = decoder.decode(offset)
                    code = _iso_code(value)
                    if isinstance(value, dict) and RANGE_INDEX_KEY in value:
                        self._add_index_item(value[RANGE_INDEX_KEY])
                    if code is not None:
                        codes[offset - self._tree_size + self.node_count] = code
                    offset = next_offset
            except (ValueError, IndexError, self._invalid) as exc:
                raise GeoipError(f"{self.path}: bad data section: {exc}") from None
            self._codes = codes
        return self._codes

    def _add_index_item(self, item: Any) -> None:
        if self._index is None:
            self._index = {}
        try:
            key = (str(item["cc"]).upper(), int(item["ip_version"]))
            self._index.setdefault(key, []).append(bytes(item["ranges"]))
        except (KeyError, TypeError, ValueError):
            raise GeoipError(f"{self.path}: damaged range index") from None

    def countries(self) -> set[str]:
        return set(self.record_codes().values())

    def _from_index(self, codes: Collection[str]) -> dict[str, tuple[Ranges, Ranges]] | None:
        self.record_codes()
        if self._index is None:
            return None
        index = self._index
        try:
            return {
                code: tuple(  # type: ignore[misc]
                    [r for blob in index.get((code, v), ()) for r in unpack_ranges(blob, w)]
                    for v, w in ((4, 4), (6, 16))
                )
                for code in codes
            }
        except (ValueError, zlib.error):
            return None  # damaged index: the tree is the truth

    def extract(self, codes: Collection[str]) -> dict[str, tuple[Ranges, Ranges]]:
        """IPv4 and IPv6 ranges of each wanted country code (upper case)."""
        indexed = self._from_index(codes)
        if indexed is not None:
            return indexed
        wanted = {rec: code for rec, code in self.record_codes().items() if code in codes}
        found: dict[str, tuple[list[tuple[int, int]], list[tuple[int, int]]]] = {
            code: ([], []) for code in codes
        }
        if not wanted:
            return {code: ([], []) for code in codes}
        left, right = self._records()
        if self.ip_version == 4:
            v4_root, v6_root = 0, None
        else:
            v4_root = 0
            for _ in range(_V4_IN_V6_DEPTH):
                v4_root = left[v4_root] if v4_root < self.node_count else v4_root
            v6_root = 0
        if v4_root < self.node_count:
            for rec, lo, hi in self._walk(left, right, v4_root, 32, wanted=wanted, skip=None):
                found[wanted[rec]][0].append((lo, hi))
        if v6_root is not None:
            for rec, lo, hi in self._walk(left, right, v6_root, 128, wanted=wanted, skip=v4_root):
                found[wanted[rec]][1].append((lo, hi))
        return {code: (merge_ranges(v4), merge_ranges(v6)) for code, (v4, v6) in found.items()}

    def _records(self) -> tuple[array[int], array[int]]:
        try:
            return unpack_tree(self._buf[: self._tree_size], self.node_count, self.record_size)
        except ValueError as exc:
            raise GeoipError(f"{self.path}: {exc}") from None

    def _walk(
        self,
        left: array[int],
        right: array[int],
        root: int,
        bits: int,
        *,
        wanted: dict[int, str],
        skip: int | None,
    ) -> Iterator[tuple[int, int, int]]:
        """``(record, low, high)`` of every leaf carrying a wanted record, depth first.

        ``skip`` is the IPv4 subtree when walking IPv6: aliases (``::ffff:0:0/96``,
        MaxMind's ``2002::/16``) point at it and must not be counted as IPv6.
        """
        n = self.node_count
        stack = [(root, 0, 0)]
        pop, push = stack.pop, stack.append
        get_left, get_right = left.__getitem__, right.__getitem__
        while stack:
            node, depth, base = pop()
            depth += 1
            size = 1 << (bits - depth)
            rec = get_left(node)
            if rec < n:
                if rec != skip:
                    push((rec, depth, base))
            elif rec in wanted:
                yield rec, base, base + size - 1
            rec = get_right(node)
            if rec < n:
                if rec != skip:
                    push((rec, depth, base | size))
            elif rec in wanted:
                yield rec, base | size, (base | size) + size - 1
