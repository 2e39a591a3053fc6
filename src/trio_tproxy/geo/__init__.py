"""Geodata: geosite lists (domain-list-community files) and GeoIP (a MaxMind DB).

:class:`GeoData` is what compilation takes. It loads lazily: a geosite list is read when
a rule names it (with its includes), and the MaxMind DB is opened only when an entry
names a country; ``geoip:private`` is built in and needs no database. One ``GeoData``
serves one compilation (a reload makes a new one, so edited files are seen).
"""

from __future__ import annotations

import importlib
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.schema import GeodataConfig
from .geoip import CountryDB, GeoipError, Ranges, private_ranges
from .geosite import GeositeError, GeositeLoader, GeositeRule
from .stamps import file_stamp, newest, tree_stamp

if TYPE_CHECKING:
    from .build import BuildStats, GeodataBuildError, build_country_mmdb

__all__ = [
    "BuildStats", "CountryDB", "GeoData", "GeodataBuildError", "GeoipError", "GeositeError",
    "GeositeRule", "Ranges", "build_country_mmdb",
]  # fmt: skip


def __getattr__(name: str) -> object:
    """The database builder is imported when used: commands that only read skip it."""
    if name in ("BuildStats", "GeodataBuildError", "build_country_mmdb"):
        return getattr(importlib.import_module(".build", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class GeoData:
    def __init__(self, rules_dir: str | Path, geoip_path: str | Path) -> None:
        self.rules_dir = Path(rules_dir)
        self.geoip_path = Path(geoip_path)
        self._sites = GeositeLoader(self.rules_dir)
        self._db: CountryDB | None = None
        self._countries: dict[str, tuple[Ranges, Ranges]] = {}

    @classmethod
    def load(cls, cfg: GeodataConfig, base_dir: Path | None = None) -> GeoData:
        """Relative paths in the configuration are taken relative to ``base_dir``
        (e.g. the configuration file's directory); ``None`` = the working directory."""
        base = base_dir or Path()
        return cls(base / cfg.rules_dir, base / cfg.geoip)

    def geosite(self, name: str) -> tuple[GeositeRule, ...]:
        """All rules of list ``name`` (case-insensitive), includes flattened.

        Raises :class:`GeositeError` (missing list or include, cycle, bad lines).
        """
        return self._sites.resolve(name)

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
        """Extract several countries in one pass over the database (raises GeoipError)."""
        wanted = {c.upper() for c in codes if c.lower() != "private"} - set(self._countries)
        if not wanted:
            return
        db = self._database()
        known = db.countries()
        self._countries.update(db.extract(wanted & known))

    def country_ranges(self, code: str) -> tuple[Ranges, Ranges]:
        """IPv4 and IPv6 ranges of a country code, or of ``private``.

        Raises :class:`GeoipError` if the database is missing or has no such country
        (like v2ray, an unknown code is an error: ``geoip:uk`` is a typo for ``gb``).
        """
        if code.lower() == "private":
            return private_ranges()
        code = code.upper()
        if code not in self._countries:
            db = self._database()
            if code not in db.countries():
                raise GeoipError(f"country {code!r} is not in {self.geoip_path}")
            self.prefetch_countries([code])
        return self._countries[code]

    def countries(self, codes: Collection[str]) -> dict[str, tuple[Ranges, Ranges]]:
        """The ranges already extracted for ``codes`` (to keep with a compiled router)."""
        wanted = {c.upper() for c in codes}
        return {c: r for c, r in self._countries.items() if c in wanted}

    def add_countries(self, found: dict[str, tuple[Ranges, Ranges]]) -> None:
        """Ranges extracted earlier from this same database (a compile cache's)."""
        self._countries.update(found)

    def stamp(self, lists: bool, geoip: bool) -> tuple[object, int] | None:
        """What a compile cache must see unchanged to reuse results computed from this
        geodata: every file of the rules directory (affiliations scan them all) if
        ``lists``, the database if ``geoip``; and the newest time among them (see
        ``RACY_NS`` in trio_tproxy/router_cache.py). None: the rules directory cannot be listed,
        so a change in it could go unseen: do not cache."""
        tree = tree_stamp(self.rules_dir) if lists else None
        if lists and tree is None:
            return None
        database = file_stamp(self.geoip_path) if geoip else None
        stamps = [database] if tree is None else [database, tree[0], *tree[1]]
        return (tree, database), newest(stamps)

    def lookup_country(self, ip: str) -> str | None:
        """One address's country (for ``match`` output); raises GeoipError without a DB."""
        return self._database().lookup(ip)
