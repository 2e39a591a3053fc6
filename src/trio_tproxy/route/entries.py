"""A domain condition's entries and where each came from: what :class:`DomainIndex`
matches *fast* is answered here *precisely*, for ``match`` explanations and DNS server
ordering (v2ray's order: full > longest suffix > keyword > regexp)."""

from __future__ import annotations

import re
from typing import Literal, TypeVar

import attrs

from ..geo.geosite import GeositeRule

__all__ = ["DomainMatch", "Entries", "MatchKind", "PackedEntries"]

MatchKind = Literal["full", "domain", "keyword", "regexp"]
_KIND_ORDER = {"full": 0, "domain": 1, "keyword": 2, "regexp": 3}
Origin = tuple[str, GeositeRule]  # (config entry, e.g. "geosite:google"; the rule)
_T = TypeVar("_T")


@attrs.frozen
class DomainMatch:
    """The best entry of one group that matched a domain."""

    kind: MatchKind
    pattern: str
    source: str  # the configuration entry: "geosite:google", "keyword:shop", "sina.com"
    location: str | None  # "rules/google:12" for list entries, None for inline ones

    @property
    def rank(self) -> tuple[int, int]:
        """Sort key for DNS server selection: full, then longer suffixes, keyword, regexp."""
        return _KIND_ORDER[self.kind], -len(self.pattern) if self.kind == "domain" else 0

    @property
    def rule_text(self) -> str:
        return f"{self.kind}:{self.pattern}"

    def __str__(self) -> str:
        if self.location is None:
            return f'"{self.source}"'
        return f'"{self.rule_text}" ({self.source}, {self.location})'


@attrs.define
class Entries:
    """One group's entries by kind, pattern -> origin (the first of equal patterns)."""

    full: dict[str, Origin] = attrs.Factory(dict)
    suffix: dict[str, Origin] = attrs.Factory(dict)
    keywords: dict[str, Origin] = attrs.Factory(dict)
    regexps: dict[str, Origin] = attrs.Factory(dict)

    def best(self, domain: str) -> DomainMatch | None:
        found = _best(domain, self.full, self.suffix, self.keywords, self.regexps)
        if found is None:
            return None
        kind, pattern, (source, rule) = found
        return DomainMatch(kind, pattern, source, rule.location if rule.file else None)


@attrs.frozen
class PackedEntries:
    """The same as stored in a compile cache: each entry's origin is one int,
    (index into ``sites`` of its (config entry, list file)) << 32 | line. Unpickling
    35,000 named tuples was most of a cache load's time (trio_tproxy/router_cache.py)."""

    full: dict[str, int]
    suffix: dict[str, int]
    keywords: dict[str, int]
    regexps: dict[str, int]
    sites: tuple[tuple[str, str], ...]

    @classmethod
    def of(cls, entries: Entries) -> PackedEntries:
        sites: dict[tuple[str, str], int] = {}

        def pack(table: dict[str, Origin]) -> dict[str, int]:
            return {
                value: sites.setdefault((source, rule.file), len(sites)) << 32 | rule.line
                for value, (source, rule) in table.items()
            }

        tables = (
            pack(entries.full), pack(entries.suffix), pack(entries.keywords),
            pack(entries.regexps),
        )  # fmt: skip
        return cls(*tables, tuple(sites))

    def best(self, domain: str) -> DomainMatch | None:
        found = _best(domain, self.full, self.suffix, self.keywords, self.regexps)
        if found is None:
            return None
        kind, pattern, packed = found
        source, file = self.sites[packed >> 32]
        line = packed & 0xFFFFFFFF  # 0 for a rule of a .dat: its file is "list X of FILE"
        return DomainMatch(
            kind, pattern, source, (f"{file}:{line}" if line else file) if file else None
        )


def _best(domain: str, *tables: dict[str, _T]) -> tuple[MatchKind, str, _T] | None:
    """The best entry of (full, suffix, keyword, regexp) tables for ``domain``."""
    full, suffix, keywords, regexps = tables
    if domain in full:
        return "full", domain, full[domain]
    candidate = domain
    while True:  # longest suffix first
        if candidate in suffix:
            return "domain", candidate, suffix[candidate]
        dot = candidate.find(".")
        if dot < 0:
            break
        candidate = candidate[dot + 1 :]
    for keyword, origin in keywords.items():
        if keyword in domain:
            return "keyword", keyword, origin
    for pattern, origin in regexps.items():
        if re.search(pattern, domain):
            return "regexp", pattern, origin
    return None
