"""Geodata: geosite lists (domain-list-community files) and GeoIP (a MaxMind DB), or
v2ray's geosite.dat / geoip.dat instead, plus ``ext:`` .dat files (see :mod:`.datfiles`).

:class:`GeoData` is what compilation takes. It loads lazily: a geosite list is read when
a rule names it (with its includes), and the MaxMind DB is opened only when an entry
names a country; ``geoip:private`` is built in and needs no database (with a geoip.dat
that holds PRIVATE, it comes from there, as in v2ray). One ``GeoData`` serves one
compilation (a reload makes a new one, so edited files are seen).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.schema import GeodataConfig
from .dat import DatError
from .datfiles import DatFiles, dat_origin, split_ext
from .geoip import CountryDB, GeoipError, Ranges, private_ranges
from .geosite import GeositeError, GeositeLoader, GeositeRule
from .stamps import file_stamp, newest, tree_stamp

if TYPE_CHECKING:
    from .build import BuildStats, GeodataBuildError, build_country_mmdb

__all__ = [
    "EXT_DOMAIN_PREFIXES", "EXT_IP_PREFIXES", "BuildStats", "CountryDB", "GeoData",
    "GeodataBuildError", "GeoipError", "GeositeError", "GeositeRule", "Ranges",
    "build_country_mmdb", "ip_list_key", "ip_list_name", "split_ext",
]  # fmt: skip


def __getattr__(name: str) -> object:
    """The database builder is imported when used: commands that only read skip it."""
    if name in ("BuildStats", "GeodataBuildError", "build_country_mmdb"):
        return getattr(importlib.import_module(".build", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class GeoData:
    def __init__(
        self,
        rules_dir: str | Path,
        geoip_path: str | Path,
        *,
        geosite_dat: str | Path | None = None,
        geoip_dat: str | Path | None = None,
        base_dir: Path | None = None,
    ) -> None:
        self.rules_dir = Path(rules_dir)
        self.geoip_path = Path(geoip_path)
        self.geosite_dat = None if geosite_dat is None else Path(geosite_dat)
        self.geoip_dat = None if geoip_dat is None else Path(geoip_dat)
        self.base_dir = base_dir or Path()
        self._sites = GeositeLoader(self.rules_dir)
        self._dats = DatFiles()
        self._db: CountryDB | None = None
        self._countries: dict[str, tuple[Ranges, Ranges]] = {}

    @classmethod
    def load(cls, cfg: GeodataConfig, base_dir: Path | None = None) -> GeoData:
        """Relative paths in the configuration are taken relative to ``base_dir``
        (e.g. the configuration file's directory); ``None`` = the working directory."""
        base = base_dir or Path()
        return cls(
            base / cfg.rules_dir,
            base / cfg.geoip,
            geosite_dat=base / cfg.geosite_dat if cfg.geosite_dat else None,
            geoip_dat=base / cfg.geoip_dat if cfg.geoip_dat else None,
            base_dir=base,
        )

    def asset_path(self, file: str, *, domains: bool) -> Path:
        """Where ``ext:FILE:TAG`` reads FILE: as v2ray's asset directory, the directory of
        ``geosite_dat`` (domain lists) or ``geoip_dat`` (IP lists), else of the other one,
        else the base directory; an absolute FILE as it is."""
        dats = (self.geosite_dat, self.geoip_dat) if domains else (self.geoip_dat, self.geosite_dat)
        directory = next((d.parent for d in dats if d is not None), self.base_dir)
        return directory / file

    def geosite(self, name: str) -> tuple[GeositeRule, ...]:
        """All rules of list ``name`` (case-insensitive), includes flattened: from
        ``geosite_dat`` when set, else from ``rules_dir``.

        Raises :class:`GeositeError` (missing list or include, cycle, bad lines, a bad
        .dat file).
        """
        if self.geosite_dat is not None:
            return self._dats.sites(self.geosite_dat, name)
        return self._sites.resolve(name)

    def ext_sites(self, file: str, name: str) -> tuple[GeositeRule, ...]:
        """``ext:FILE:NAME``: list NAME of a geosite .dat in the asset directory."""
        return self._dats.sites(self.asset_path(file, domains=True), name)

    def _database(self) -> CountryDB:
        if self._db is None:
            if not self.geoip_path.exists():
                raise GeoipError(
                    f"GeoIP database {self.geoip_path} not found; build one with "
                    "`trio-tproxy geodata build /usr/share/tor/geoip /usr/share/tor/geoip6 "
                    f"-o {self.geoip_path}` (Debian package tor-geoipdb)"
                )
            self._db = CountryDB(self.geoip_path)
        return self._db

    def prefetch_countries(self, codes: Collection[str]) -> None:
        """Extract several countries in one pass over the database (raises GeoipError).
        Lists of .dat files need no prefetching: each is one slice of its file."""
        if self.geoip_dat is not None:
            return
        wanted = {ip_list_key(c) for c in codes if not c.startswith("ext:")}
        wanted -= {"PRIVATE", *self._countries}
        if not wanted:
            return
        db = self._database()
        known = db.countries()
        self._countries.update(db.extract(wanted & known))

    def country_ranges(self, code: str) -> tuple[Ranges, Ranges]:
        """IPv4 and IPv6 ranges of an IP list: a country code or other geoip name, or
        ``private``, or ``ext:FILE:TAG`` (see :func:`ip_list_name`).

        Raises :class:`GeoipError` if the database or .dat is missing or bad or has no
        such list (like v2ray, an unknown code is an error: ``geoip:uk`` is a typo for
        ``gb``).
        """
        key = ip_list_key(code)
        if key not in self._countries:
            self._countries[key] = self._ranges_of(key)
        return self._countries[key]

    def _ranges_of(self, key: str) -> tuple[Ranges, Ranges]:
        if key.startswith("ext:"):
            file, name = split_ext(key[len("ext:") :])
            return self._dats.ranges(self.asset_path(file, domains=False), name)
        if self.geoip_dat is not None:
            if key == "PRIVATE" and not self._dat_has(self.geoip_dat, key):
                return private_ranges()
            return self._dats.ranges(self.geoip_dat, key)
        if key == "PRIVATE":
            return private_ranges()
        db = self._database()
        if key not in db.countries():
            raise GeoipError(f"country {key!r} is not in {self.geoip_path}")
        self.prefetch_countries([key])
        return self._countries[key]

    def _dat_has(self, path: Path, name: str) -> bool:
        try:
            return self._dats.has(path, name)
        except DatError as exc:
            raise GeoipError(str(exc)) from None

    def ip_origin(self, code: str) -> str | None:
        """Which .dat list an IP list comes from (for ``match``); None for the MaxMind DB
        and the built-in private ranges."""
        key = ip_list_key(code)
        if key.startswith("ext:"):
            file, name = split_ext(key[len("ext:") :])
            return dat_origin(self.asset_path(file, domains=False), name)
        if self.geoip_dat is None:
            return None
        if key == "PRIVATE" and not self._dat_has(self.geoip_dat, key):
            return None
        return dat_origin(self.geoip_dat, key)

    def countries(self, codes: Collection[str]) -> dict[str, tuple[Ranges, Ranges]]:
        """The ranges already extracted for ``codes`` (to keep with a compiled router)."""
        wanted = {ip_list_key(c) for c in codes}
        return {c: r for c, r in self._countries.items() if c in wanted}

    def add_countries(self, found: dict[str, tuple[Ranges, Ranges]]) -> None:
        """Ranges extracted earlier from these same files (a compile cache's)."""
        self._countries.update(found)

    def stamp(
        self, domain_entries: Collection[str], ip_codes: Collection[str]
    ) -> tuple[object, int] | None:
        """What a compile cache must see unchanged to reuse results computed from this
        geodata for these ``domain`` entries and IP lists (:func:`ip_list_name` keys):
        every file of the rules directory (affiliations scan them all) if a ``geosite:``
        entry reads it, else the geosite .dat; every ext .dat named; the database or
        geoip .dat if an IP list reads it; and the newest time among them (see
        ``RACY_NS`` in trio_tproxy/router_cache.py). None: the rules directory cannot be listed,
        so a change in it could go unseen: do not cache."""
        files: set[Path] = set()
        tree = None
        for entry in domain_entries:
            kind, _, value = entry.partition(":")
            kind = kind.lower()
            if kind == "geosite" and self.geosite_dat is not None:
                files.add(self.geosite_dat)
            elif kind == "geosite" and tree is None:
                if (tree := tree_stamp(self.rules_dir)) is None:
                    return None
            elif kind in EXT_DOMAIN_PREFIXES:
                with contextlib.suppress(ValueError):  # reported by the compile
                    files.add(self.asset_path(split_ext(value)[0], domains=True))
        for code in map(ip_list_key, ip_codes):
            if code.startswith("ext:"):
                files.add(self.asset_path(split_ext(code[len("ext:") :])[0], domains=False))
            elif self.geoip_dat is not None:
                files.add(self.geoip_dat)
            elif code != "PRIVATE":
                files.add(self.geoip_path)
        stamps = [file_stamp(path) for path in sorted(files)]
        found = [*stamps] if tree is None else [*stamps, tree[0], *tree[1]]
        return (tree, tuple(stamps)), newest(found)

    def lookup_country(self, ip: str) -> str | None:
        """One address's country (for ``match`` output); raises GeoipError without a DB."""
        return self._database().lookup(ip)


EXT_DOMAIN_PREFIXES = ("ext", "ext-domain")  # v2ray: ext:FILE:TAG and ext-domain:FILE:TAG
EXT_IP_PREFIXES = ("ext", "ext-ip")


def ip_list_name(entry: str) -> tuple[str, bool] | None:
    """An ip entry's list and whether it is negated: ``geoip:!cn`` -> ("cn", True),
    ``ext-ip:my.dat:!tag`` -> ("ext:my.dat:tag", True); None for an address or CIDR."""
    kind, sep, value = entry.partition(":")
    kind = kind.lower()
    if sep and kind == "geoip":
        return value.removeprefix("!"), value.startswith("!")
    if sep and kind in EXT_IP_PREFIXES:
        file, tag = split_ext(value)
        return f"ext:{file}:{tag.removeprefix('!')}", tag.startswith("!")
    return None


def ip_list_key(name: str) -> str:
    """The one spelling of a list name from :func:`ip_list_name` (upper-case names)."""
    if name.startswith("ext:"):
        file, tag = split_ext(name[len("ext:") :])
        return f"ext:{file}:{tag.upper()}"
    return name.upper()
