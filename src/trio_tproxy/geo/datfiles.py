"""v2ray ``.dat`` files as rule data: ``geosite:``/``geoip:`` from ``geodata.geosite_dat`` /
``geoip_dat``, and ``ext:FILE:TAG`` / ``ext-ip:FILE:TAG`` from any file of the asset
directory.

A file is read and its top-level framing checked the first time a rule names it (a
truncated file is an error even if the list asked for precedes the cut); an entry is
decoded only when named, as v2ray does: a real geoip.dat is ~20 MB and decoding all of
it here takes ~7 s, one country ~20 ms. Every problem is a :class:`GeositeError` (domain
lists) or :class:`GeoipError` (IP lists) naming the file, so ``check`` reports it at the
entry that named the list, never as a traceback.

A list's rules keep where they came from as ``list NAME of FILE`` (no line: the .dat has
none), which ``match`` shows beside the pattern that matched.
"""

from __future__ import annotations

import re
from pathlib import Path

from .dat import DatError, geoip_entry_ranges, geosite_entry, index_dat
from .dlc import GeositeError, GeositeRule
from .geoip import GeoipError, Ranges, complement, merge_ranges

__all__ = ["DatFiles", "dat_origin", "split_ext"]

_V4_TOP = (1 << 32) - 1
_V6_TOP = (1 << 128) - 1


def split_ext(value: str) -> tuple[str, str]:
    """``FILE:TAG`` (what follows ``ext:``) -> (FILE, TAG); FILE may hold colons, TAG not.
    Raises ValueError when either part is empty."""
    file, sep, tag = value.rpartition(":")
    if not sep or not file or not tag:
        raise ValueError(f"expected FILE:TAG, got {value!r}")
    return file, tag


def dat_origin(path: Path, name: str) -> str:
    return f"list {name.upper()} of {path}"


class _Loaded:
    """One file's bytes and where each entry is."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self.data = path.read_bytes()
        except FileNotFoundError:
            raise DatError(str(path), "no such file") from None
        except OSError as exc:
            raise DatError(str(path), f"cannot read: {exc.strerror or exc}") from None
        self.spans = index_dat(self.data, str(path))


class DatFiles:
    """The .dat files one compilation reads, each loaded once; decoded lists cached."""

    def __init__(self) -> None:
        self._files: dict[Path, _Loaded | DatError] = {}
        self._sites: dict[tuple[Path, str], tuple[GeositeRule, ...]] = {}
        self._ips: dict[tuple[Path, str], tuple[Ranges, Ranges]] = {}

    def _file(self, path: Path) -> _Loaded:
        if path not in self._files:
            try:
                self._files[path] = _Loaded(path)
            except DatError as exc:
                self._files[path] = exc
        found = self._files[path]
        if isinstance(found, DatError):
            raise found
        return found

    def has(self, path: Path, name: str) -> bool:
        """Whether the file holds list ``name``; raises DatError if it cannot be read."""
        return name.upper() in self._file(path).spans

    def sites(self, path: Path, name: str) -> tuple[GeositeRule, ...]:
        """Every domain of list ``name`` of a geosite .dat; raises GeositeError."""
        key = (path, name.upper())
        if key not in self._sites:
            try:
                self._sites[key] = self._decode_sites(path, key[1])
            except DatError as exc:
                raise GeositeError([str(exc)]) from None
        return self._sites[key]

    def _decode_sites(self, path: Path, name: str) -> tuple[GeositeRule, ...]:
        loaded = self._file(path)
        span = loaded.spans.get(name)
        if span is None:
            raise DatError(str(path), f"no list {name!r} in this geosite file")
        origin = dat_origin(path, name)
        rules = []
        for domain in geosite_entry(loaded.data, span, str(path)):
            value = domain.value if domain.kind == "regexp" else domain.value.lower()
            if not value:
                raise DatError(str(path), f"list {name}: empty {domain.kind} value")
            if domain.kind == "regexp":
                _check_regexp(value, path, name)
            attrs = frozenset(a.lower() for a in domain.attrs)
            rules.append(GeositeRule(domain.kind, value, attrs, origin, 0))
        return tuple(rules)

    def ranges(self, path: Path, name: str) -> tuple[Ranges, Ranges]:
        """IPv4 and IPv6 ranges of list ``name`` of a geoip .dat; raises GeoipError."""
        key = (path, name.upper())
        if key not in self._ips:
            try:
                self._ips[key] = self._decode_ranges(path, key[1])
            except DatError as exc:
                raise GeoipError(str(exc)) from None
        return self._ips[key]

    def _decode_ranges(self, path: Path, name: str) -> tuple[Ranges, Ranges]:
        loaded = self._file(path)
        span = loaded.spans.get(name)
        if span is None:
            raise DatError(str(path), f"no list {name!r} in this geoip file")
        v4, v6, reverse = geoip_entry_ranges(loaded.data, span, str(path))
        v4, v6 = merge_ranges(v4), merge_ranges(v6)
        if reverse:  # v2ray's reverse_match: every address the CIDRs do not cover
            return complement(v4, _V4_TOP), complement(v6, _V6_TOP)
        return v4, v6


def _check_regexp(value: str, path: Path, name: str) -> None:
    try:
        re.compile(value)
    except (re.error, OverflowError, RecursionError) as exc:
        raise DatError(str(path), f"list {name}: bad regexp {value!r}: {exc}") from None
