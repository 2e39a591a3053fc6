"""v2ray's ``geosite.dat`` and ``geoip.dat``: a hand-written protobuf reader and writer.

The schema (v2ray ``app/router/config.proto``)::

    GeoSiteList { repeated GeoSite entry = 1; }
    GeoSite     { string country_code = 1; repeated Domain domain = 2; }
    Domain      { Type type = 1; string value = 2; repeated Attribute attribute = 3; }
                  // Type: Plain=0 (keyword), Regex=1, Domain=2 (suffix), Full=3
    Attribute   { string key = 1; oneof typed_value { bool bool_value = 2; int64 int_value = 3; } }
    GeoIPList   { repeated GeoIP entry = 1; }
    GeoIP       { string country_code = 1; repeated CIDR cidr = 2; bool reverse_match = 3; }
    CIDR        { bytes ip = 1; uint32 prefix = 2; }

Unknown fields are skipped by wire type (0 varint, 1 fixed64, 2 length-delimited,
5 fixed32). Any truncation, bad wire type or bad value raises :class:`DatError` with the
byte offset; nothing else escapes. Country codes are upper-cased (as v2ray stores them);
:meth:`DatTable.lookup` is case-insensitive. When a code appears twice the first entry
wins, as in v2ray's loader. A ``reverse_match`` GeoIP entry is read as the complement of
its CIDRs over both address families (what v2ray's reversed matcher matches).

Routing does not read whole files: :func:`index_dat` finds each entry's code and span
(checking the file's framing), and :func:`geosite_entry` / :func:`geoip_entry_ranges`
decode only the entries a configuration names (see geo/datfiles.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from typing import Generic, NamedTuple, TypeVar

from .dlc import GeositeRule, RuleKind

__all__ = [
    "DatDomain", "DatError", "DatTable", "IPNetwork", "dat_domains", "encode_geoip_dat",
    "encode_geosite_dat", "geoip_entry", "geoip_entry_ranges", "geosite_entry", "index_dat",
    "read_geoip_dat", "read_geosite_dat",
]  # fmt: skip

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_T = TypeVar("_T")
_KIND_OF_TYPE: tuple[RuleKind, ...] = ("keyword", "regexp", "domain", "full")
_TYPE_OF_KIND: dict[str, int] = {kind: n for n, kind in enumerate(_KIND_OF_TYPE)}
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class DatError(Exception):
    """A ``.dat`` file that is not a well-formed GeoSiteList / GeoIPList."""

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}")


class DatDomain(NamedTuple):
    kind: RuleKind
    value: str
    attrs: frozenset[str]


class DatTable(dict[str, list[_T]], Generic[_T]):
    """Country code (upper case) -> entries."""

    def lookup(self, name: str) -> list[_T] | None:
        return self.get(name.upper())


# --- reading -------------------------------------------------------------------------


class _Field(NamedTuple):
    number: int
    wire: int
    value: int  # the varint; for length-delimited fields, the start offset
    end: int  # for length-delimited fields, the end offset; else the field's end


def _varint(data: memoryview, pos: int, end: int, path: str) -> tuple[int, int]:
    result = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise DatError(path, f"offset {start}: truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise DatError(path, f"offset {start}: varint longer than 10 bytes")


def _fields(data: memoryview, pos: int, end: int, path: str) -> Iterator[_Field]:
    while pos < end:
        f = _field_at(data, pos, end, path)
        yield f
        pos = f.end


def _field_at(data: memoryview, pos: int, end: int, path: str) -> _Field:
    """The field starting at ``pos``; its ``end`` is where the next one starts."""
    at = pos
    key, pos = _varint(data, pos, end, path)
    number, wire = key >> 3, key & 7
    if number == 0:
        raise DatError(path, f"offset {at}: field number 0")
    if wire == _VARINT:
        value, pos = _varint(data, pos, end, path)
        return _Field(number, wire, value, pos)
    if wire == _BYTES:
        length, pos = _varint(data, pos, end, path)
        if length > end - pos:
            raise DatError(path, f"offset {at}: field {number}: truncated ({length} bytes)")
        return _Field(number, wire, pos, pos + length)
    size = {_FIXED64: 8, _FIXED32: 4}.get(wire)
    if size is None:
        raise DatError(path, f"offset {at}: field {number}: bad wire type {wire}")
    if size > end - pos:
        raise DatError(path, f"offset {at}: field {number}: truncated fixed{size * 8}")
    return _Field(number, wire, pos, pos + size)


def _expect(f: _Field, wire: int, what: str, path: str) -> None:
    if f.wire != wire:
        raise DatError(path, f"offset {f.value}: {what}: wire type {f.wire}, expected {wire}")


def _text(data: memoryview, f: _Field, what: str, path: str) -> str:
    _expect(f, _BYTES, what, path)
    try:
        return bytes(data[f.value : f.end]).decode("utf-8")
    except UnicodeDecodeError:
        raise DatError(path, f"offset {f.value}: {what}: not UTF-8") from None


def _entries(data: bytes, path: str) -> Iterator[tuple[memoryview, _Field]]:
    view = memoryview(data)
    for f in _fields(view, 0, len(view), path):
        if f.number == 1:
            _expect(f, _BYTES, "entry", path)
            yield view, f


def _attribute(data: memoryview, outer: _Field, path: str) -> str:
    key = ""
    for f in _fields(data, outer.value, outer.end, path):
        if f.number == 1:
            key = _text(data, f, "attribute key", path)
    return key


def _domain(data: memoryview, outer: _Field, path: str) -> DatDomain:
    kind = 0
    value = ""
    found: set[str] = set()
    for f in _fields(data, outer.value, outer.end, path):
        if f.number == 1:
            _expect(f, _VARINT, "domain type", path)
            kind = f.value
        elif f.number == 2:
            value = _text(data, f, "domain value", path)
        elif f.number == 3:
            _expect(f, _BYTES, "attribute", path)
            found.add(_attribute(data, f, path))
    if kind >= len(_KIND_OF_TYPE):
        raise DatError(path, f"offset {outer.value}: unknown domain type {kind}")
    return DatDomain(_KIND_OF_TYPE[kind], value, frozenset(found))


def index_dat(data: bytes, path: str) -> dict[str, tuple[int, int]]:
    """Each entry's code (upper case) -> the byte span of its message, the first of equal
    codes winning; checks the file's top-level framing (a truncated file fails here) but
    decodes no entry: a real geoip.dat is ~20 MB, and a configuration names a few lists."""
    spans: dict[str, tuple[int, int]] = {}
    for view, entry in _entries(data, path):
        spans.setdefault(_entry_code(view, entry, path), (entry.value, entry.end))
    return spans


def _entry_code(view: memoryview, entry: _Field, path: str) -> str:
    for f in _fields(view, entry.value, entry.end, path):
        if f.number == 1:  # written first by every known writer: one field read
            return _text(view, f, "country code", path).upper()
    return ""


def geosite_entry(data: bytes, span: tuple[int, int], path: str) -> list[DatDomain]:
    """The domains of the GeoSite message at ``span`` (from :func:`index_dat`)."""
    view = memoryview(data)
    domains: list[DatDomain] = []
    for f in _fields(view, span[0], span[1], path):
        if f.number == 2:
            _expect(f, _BYTES, "domain", path)
            domains.append(_domain(view, f, path))
    return domains


def read_geosite_dat(data: bytes, path: str = "geosite.dat") -> DatTable[DatDomain]:
    """GeoSiteList -> {COUNTRY_CODE: [DatDomain, ...]}; raises :class:`DatError`."""
    table: DatTable[DatDomain] = DatTable()
    for code, span in index_dat(data, path).items():
        table[code] = geosite_entry(data, span, path)
    return table


def _cidr(data: memoryview, outer: _Field, path: str) -> IPNetwork:
    ip = b""
    prefix = 0
    for f in _fields(data, outer.value, outer.end, path):
        if f.number == 1:
            _expect(f, _BYTES, "cidr ip", path)
            ip = bytes(data[f.value : f.end])
        elif f.number == 2:
            _expect(f, _VARINT, "cidr prefix", path)
            prefix = f.value
    if len(ip) not in (4, 16):
        raise DatError(path, f"offset {outer.value}: cidr ip of {len(ip)} bytes (4 or 16)")
    if prefix > len(ip) * 8:
        raise DatError(path, f"offset {outer.value}: cidr prefix {prefix} > {len(ip) * 8}")
    return ipaddress.ip_network((ip, prefix), strict=False)


def _complement(nets: list[IPNetwork]) -> list[IPNetwork]:
    out: list[IPNetwork] = []
    for full in (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")):
        rest = [full]
        for net in (n for n in nets if n.version == full.version):
            rest = [r for piece in rest for r in _exclude(piece, net)]
        out.extend(rest)
    return out


def _exclude(piece: IPNetwork, net: IPNetwork) -> Iterable[IPNetwork]:
    if not piece.overlaps(net):
        return [piece]
    if net.supernet_of(piece):  # type: ignore[arg-type]
        return []
    return piece.address_exclude(net)  # type: ignore[arg-type]


def geoip_entry(data: bytes, span: tuple[int, int], path: str) -> tuple[list[IPNetwork], bool]:
    """The CIDRs of the GeoIP message at ``span`` and its ``reverse_match`` flag."""
    view = memoryview(data)
    nets: list[IPNetwork] = []
    reverse = False
    for f in _fields(view, span[0], span[1], path):
        if f.number == 2:
            _expect(f, _BYTES, "cidr", path)
            nets.append(_cidr(view, f, path))
        elif f.number == 3:
            _expect(f, _VARINT, "reverse_match", path)
            reverse = f.value != 0
    return nets, reverse


def geoip_entry_ranges(
    data: bytes, span: tuple[int, int], path: str
) -> tuple[list[tuple[int, int]], list[tuple[int, int]], bool]:
    """The GeoIP message at ``span`` as unmerged integer ranges (IPv4, IPv6) and its
    ``reverse_match`` flag: what routing needs, ~10x faster than :func:`geoip_entry`
    (a real ``US`` list is ~190,000 CIDRs).

    A CIDR laid out as every writer that sets a non-zero prefix lays it out (key 0x12,
    one length byte, ip, then a prefix below 128) is read in place; anything else goes
    through the general field reader, with the same checks."""
    view = memoryview(data)
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    reverse = False
    pos, end = span
    while pos < end:
        size = data[pos + 1] if data[pos] == 0x12 and pos + 1 < end else 0
        stop = pos + 2 + size
        if (
            size in (8, 20)
            and stop <= end
            and data[pos + 2] == 0x0A
            and data[pos + 3] == size - 4
            and data[stop - 2] == 0x10
            and data[stop - 1] <= min((size - 4) * 8, 0x7F)  # one varint byte
        ):
            width, ip, prefix = (
                size - 4,
                int.from_bytes(data[pos + 4 : stop - 2], "big"),
                data[stop - 1],
            )
            pos = stop
        else:
            f = _field_at(view, pos, end, path)
            pos = f.end
            if f.number == 3:
                _expect(f, _VARINT, "reverse_match", path)
                reverse = f.value != 0
            if f.number != 2:
                continue
            _expect(f, _BYTES, "cidr", path)
            net = _cidr(view, f, path)
            width, ip, prefix = net.max_prefixlen // 8, int(net.network_address), net.prefixlen
        host = (1 << (width * 8 - prefix)) - 1
        (v4 if width == 4 else v6).append((ip & ~host, ip | host))
    return v4, v6, reverse


def read_geoip_dat(data: bytes, path: str = "geoip.dat") -> DatTable[IPNetwork]:
    """GeoIPList -> {COUNTRY_CODE: [network, ...]}; raises :class:`DatError`."""
    table: DatTable[IPNetwork] = DatTable()
    for code, span in index_dat(data, path).items():
        nets, reverse = geoip_entry(data, span, path)
        table[code] = _complement(nets) if reverse else nets
    return table


# --- writing -------------------------------------------------------------------------


def _put_varint(out: bytearray, value: int) -> None:
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_bytes(out: bytearray, number: int, payload: bytes) -> None:
    _put_varint(out, number << 3 | _BYTES)
    _put_varint(out, len(payload))
    out += payload


def _put_int(out: bytearray, number: int, value: int) -> None:
    _put_varint(out, number << 3 | _VARINT)
    _put_varint(out, value)


def _encode_domain(domain: DatDomain) -> bytes:
    out = bytearray()
    if kind := _TYPE_OF_KIND[domain.kind]:
        _put_int(out, 1, kind)
    _put_bytes(out, 2, domain.value.encode("utf-8"))
    for key in sorted(domain.attrs):
        attr = bytearray()
        _put_bytes(attr, 1, key.encode("utf-8"))
        _put_int(attr, 2, 1)  # bool_value = true, as domain-list-community writes them
        _put_bytes(out, 3, bytes(attr))
    return bytes(out)


def encode_geosite_dat(table: Mapping[str, Iterable[DatDomain]]) -> bytes:
    out = bytearray()
    for code, domains in table.items():
        entry = bytearray()
        _put_bytes(entry, 1, code.upper().encode("utf-8"))
        for domain in domains:
            _put_bytes(entry, 2, _encode_domain(domain))
        _put_bytes(out, 1, bytes(entry))
    return bytes(out)


def encode_geoip_dat(table: Mapping[str, Iterable[IPNetwork]]) -> bytes:
    out = bytearray()
    for code, nets in table.items():
        entry = bytearray()
        _put_bytes(entry, 1, code.upper().encode("utf-8"))
        for net in nets:
            cidr = bytearray()
            _put_bytes(cidr, 1, net.network_address.packed)
            _put_int(cidr, 2, net.prefixlen)
            _put_bytes(entry, 2, bytes(cidr))
        _put_bytes(out, 1, bytes(entry))
    return bytes(out)


def dat_domains(rules: Iterable[GeositeRule]) -> list[DatDomain]:
    """A resolved list's rules as ``.dat`` domains (what a ``geodata build`` would write)."""
    return [DatDomain(r.kind, r.value, r.attrs) for r in rules]
