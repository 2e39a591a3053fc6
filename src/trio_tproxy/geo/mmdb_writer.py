"""A small MaxMind DB writer: disjoint IPv4/IPv6 networks -> one data record each.

Format: MaxMind DB File Format Specification 2.0 (https://maxmind.github.io/MaxMind-DB/).
The file is a binary search tree of ``node_count`` nodes (two records each), 16 zero
bytes, the data section, then ``\\xab\\xcd\\xefMaxMind.com`` and the metadata map. A
record below ``node_count`` points to a node, equal to it means "no data", above it
points into the data section at ``record - node_count - 16``.

The tree is always IPv6 (``ip_version`` 6); IPv4 networks live under ``::/96`` as the
spec asks, and ``::ffff:0:0/96`` points at the same subtree so IPv4-mapped addresses find
them too (MaxMind's own writer does the same aliasing). The tree is built in one recursive
pass over the sorted networks, which is linear in the number of nodes and needs no
per-node objects: two flat lists hold the left and right records.
"""

from __future__ import annotations

import struct
import time
from array import array
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

__all__ = ["MmdbWriteError", "Uint", "encode_data", "pack_tree", "write_mmdb"]

METADATA_MARKER = b"\xab\xcd\xefMaxMind.com"
DATA_SEPARATOR = bytes(16)
V4_IN_V6 = 96  # IPv4 lives at ::a.b.c.d/(96 + prefix)
_V4_MAPPED_BASE = 0xFFFF << 32  # ::ffff:0:0/96
_EMPTY = -1  # placeholder record for "no data"; data records are encoded as -2 - offset
_ALIAS = -1  # data offset of the ::ffff:0:0/96 pseudo-network: "the IPv4 subtree"


class MmdbWriteError(ValueError):
    pass


# -- data section encoding (spec "Output Data Section") ------------------------------------

_TYPE_POINTER, _TYPE_UTF8, _TYPE_DOUBLE, _TYPE_BYTES = 1, 2, 3, 4
_TYPE_UINT16, _TYPE_UINT32, _TYPE_MAP = 5, 6, 7
_TYPE_UINT64, _TYPE_ARRAY, _TYPE_BOOL = 9, 11, 14


def _control(type_: int, size: int) -> bytes:
    if size < 29:
        head, extra = size, b""
    elif size < 29 + 256:
        head, extra = 29, bytes([size - 29])
    elif size < 285 + 65536:
        head, extra = 30, (size - 285).to_bytes(2, "big")
    else:
        head, extra = 31, (size - 65821).to_bytes(3, "big")
    if type_ <= 7:
        return bytes([(type_ << 5) | head]) + extra
    return bytes([head, type_ - 7]) + extra  # extended type: the type byte follows


def _uint(type_: int, value: int, width: int) -> bytes:
    if not 0 <= value < 1 << (8 * width):
        raise MmdbWriteError(f"unsigned value {value} does not fit {width} bytes")
    raw = value.to_bytes(width, "big").lstrip(b"\0")
    return _control(type_, len(raw)) + raw


@attrs.frozen
class Uint:
    """An unsigned integer of a fixed MMDB type; libmaxminddb insists on the metadata
    types of the spec (``node_count`` uint32, ``build_epoch`` uint64, ...) even for
    values that would fit a smaller one."""

    value: int
    bits: int  # 16, 32 or 64


def encode_data(value: Any) -> bytes:
    """Encode a value: str, bytes, bool, :class:`Uint`, non-negative int (uint16/32/64 by
    size), float, list, or a mapping with str keys."""
    if isinstance(value, Uint):
        type_ = {16: _TYPE_UINT16, 32: _TYPE_UINT32, 64: _TYPE_UINT64}[value.bits]
        return _uint(type_, value.value, value.bits // 8)
    if isinstance(value, bool):
        return _control(_TYPE_BOOL, int(value))
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return _control(_TYPE_UTF8, len(raw)) + raw
    if isinstance(value, bytes):
        return _control(_TYPE_BYTES, len(value)) + value
    if isinstance(value, int):
        if value < 1 << 16:
            return _uint(_TYPE_UINT16, value, 2)
        if value < 1 << 32:
            return _uint(_TYPE_UINT32, value, 4)
        return _uint(_TYPE_UINT64, value, 8)
    if isinstance(value, float):
        return _control(_TYPE_DOUBLE, 8) + struct.pack(">d", value)
    if isinstance(value, list | tuple):
        return _control(_TYPE_ARRAY, len(value)) + b"".join(encode_data(v) for v in value)
    if isinstance(value, Mapping):
        parts = [_control(_TYPE_MAP, len(value))]
        for key, item in value.items():
            if not isinstance(key, str):
                raise MmdbWriteError(f"map keys must be strings, got {key!r}")
            parts.append(encode_data(key))
            parts.append(encode_data(item))
        return b"".join(parts)
    raise MmdbWriteError(f"cannot encode {type(value).__name__} in a MaxMind DB")


# -- search tree ---------------------------------------------------------------------------


class _TreeBuilder:
    """Builds the tree over sorted disjoint networks ``(start, prefix, data_offset)`` in
    the 128-bit space; node ids are allocated in pre-order, root = 0."""

    def __init__(self, starts: Sequence[int], prefixes: Sequence[int], data: Sequence[int]):
        self.starts, self.prefixes, self.data = starts, prefixes, data
        self.left: list[int] = []
        self.right: list[int] = []
        self.v4_record = _EMPTY  # the record of the ::/96 subtree, for the mapped alias

    def build(self) -> None:
        if not self.starts:
            self.left.append(_EMPTY)
            self.right.append(_EMPTY)
            return
        root = self._record(0, len(self.starts), 0, 0)
        if root < 0:  # a single ::/0 network: the root must still be a node
            self.left.append(root)
            self.right.append(root)

    def _record(self, lo: int, hi: int, base: int, depth: int) -> int:
        if lo == hi:
            return _EMPTY
        if hi - lo == 1 and self.prefixes[lo] == depth:
            offset = self.data[lo]
            record = self.v4_record if offset == _ALIAS else -2 - offset
        else:
            node = len(self.left)
            self.left.append(_EMPTY)
            self.right.append(_EMPTY)
            half = base | (1 << (127 - depth))
            mid = bisect_left(self.starts, half, lo, hi)
            self.left[node] = self._record(lo, mid, base, depth + 1)
            self.right[node] = self._record(mid, hi, half, depth + 1)
            record = node
        if depth == V4_IN_V6 and base == 0:
            self.v4_record = record
        return record


def pack_tree(left: list[int], right: list[int], record_size: int) -> bytes:
    """Serialise both record lists at C speed through big-endian 32-bit arrays."""
    n = len(left)
    lefts, rights = array("I", left), array("I", right)
    if array("I").itemsize != 4:  # pragma: no cover - every Linux ABI has 4-byte int
        raise MmdbWriteError("unsupported platform: array('I') is not 32-bit")
    if struct.pack("=I", 1) != struct.pack(">I", 1):
        lefts.byteswap()
        rights.byteswap()
    lb, rb = lefts.tobytes(), rights.tobytes()
    if record_size == 32:
        out = bytearray(8 * n)
        for i in range(4):
            out[i::8] = lb[i::4]
            out[4 + i :: 8] = rb[i::4]
        return bytes(out)
    if record_size == 24:
        out = bytearray(6 * n)
        for i in range(3):
            out[i::6] = lb[1 + i :: 4]
            out[3 + i :: 6] = rb[1 + i :: 4]
        return bytes(out)
    out = bytearray(7 * n)  # 28 bits: the middle byte holds both records' top nibbles
    for i in range(3):
        out[i::7] = lb[1 + i :: 4]
        out[4 + i :: 7] = rb[1 + i :: 4]
    out[3::7] = bytes((a << 4) | b for a, b in zip(lb[0::4], rb[0::4], strict=True))
    return bytes(out)


def _add_mapped_alias(starts: list[int], prefixes: list[int], data: list[int]) -> None:
    """Insert ``::ffff:0:0/96`` -> IPv4 subtree, if there is IPv4 data and room for it."""
    if not starts or starts[0] >= 1 << 32:
        return
    at = bisect_left(starts, _V4_MAPPED_BASE)
    end = _V4_MAPPED_BASE + (1 << 32)
    if at > 0 and starts[at - 1] + (1 << (128 - prefixes[at - 1])) > _V4_MAPPED_BASE:
        return
    if at < len(starts) and starts[at] < end:
        return
    starts.insert(at, _V4_MAPPED_BASE)
    prefixes.insert(at, V4_IN_V6)
    data.insert(at, _ALIAS)


def _record_size(max_record: int) -> int:
    for size in (24, 28, 32):
        if max_record < 1 << size:
            return size
    raise MmdbWriteError("database too large for 32-bit records")


def write_mmdb(
    networks: Sequence[tuple[int, int, int]],
    records: Sequence[Any],
    *,
    database_type: str,
    description: str,
    languages: Sequence[str] = ("en",),
    build_epoch: int | None = None,
    preamble: Sequence[Any] = (),
) -> tuple[bytes, dict[str, int]]:
    """Serialise a database; returns the file bytes and a few figures.

    ``networks`` are ``(start, prefix, record_index)`` in the 128-bit space (IPv4 as
    ``::a.b.c.d`` with prefix + 96), sorted by start and disjoint; ``records`` the data
    values they point at (each encoded once, so shared records cost nothing).
    ``preamble`` values are stored first in the data section, where no lookup ever
    reaches them (trio-tproxy keeps its per-country range index there).
    """
    offsets: list[int] = []
    chunks = [encode_data(value) for value in preamble]
    pos = sum(len(c) for c in chunks)
    for value in records:
        chunk = encode_data(value)
        offsets.append(pos)
        chunks.append(chunk)
        pos += len(chunk)
    data_section = b"".join(chunks)
    starts = [s for s, _, _ in networks]
    prefixes = [p for _, p, _ in networks]
    data = [offsets[i] for _, _, i in networks]
    _add_mapped_alias(starts, prefixes, data)
    tree = _TreeBuilder(starts, prefixes, data)
    tree.build()
    node_count = len(tree.left)
    record_size = _record_size(node_count + 16 + len(data_section))

    def fix(rec: int) -> int:
        return rec if rec >= 0 else node_count if rec == _EMPTY else node_count + 14 - rec

    left = [fix(r) for r in tree.left]
    right = [fix(r) for r in tree.right]
    metadata = {
        "binary_format_major_version": Uint(2, 16),
        "binary_format_minor_version": Uint(0, 16),
        "build_epoch": Uint(int(time.time()) if build_epoch is None else build_epoch, 64),
        "database_type": database_type,
        "description": dict.fromkeys(languages, description),
        "ip_version": Uint(6, 16),
        "languages": list(languages),
        "node_count": Uint(node_count, 32),
        "record_size": Uint(record_size, 16),
    }
    body = b"".join(
        [
            pack_tree(left, right, record_size),
            DATA_SEPARATOR,
            data_section,
            METADATA_MARKER,
            encode_data(metadata),
        ]
    )
    return body, {"node_count": node_count, "record_size": record_size, "bytes": len(body)}
