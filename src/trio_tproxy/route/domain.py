"""Domain rules of many conditions in one index, matched in one pass per flow.

v2ray's strmatcher semantics (reference section 3): ``full`` is equality, ``domain`` is
the domain itself or any subdomain (a suffix at a ``.`` boundary), ``keyword`` a
substring, ``regexp`` an unanchored search. Patterns and targets are lower-case.

Every domain condition of a router (and of DNS servers, sniffing exclusions) is a
*group* of one :class:`DomainIndex`; :meth:`DomainIndex.mask` answers "which groups
match this domain" as a bit mask in one pass, so a flow that misses three big geosite
rules pays for one probe sequence, not three:

* full: one dict probe;
* suffixes: one dict holding every pattern and, as markers, each pattern's shorter
  suffixes, probed label by label from the right and stopped at the first miss (the
  dict is a flattened suffix trie): two or three probes for most domains;
* keywords: ``in`` per keyword (configs have a few; domain-list-community has none);
* regexps: only the candidates a domain selects (:mod:`.regexkeys`): those keyed by its
  last label (a TLD, when the regexp has no better literal), those keyed by the first
  three characters of the label before it, and those whose required literal one
  combined search finds in it; ~160 regexps cost two dict probes and one search.

Matching says *whether*; :meth:`DomainIndex.best` (the slow path, for ``match``
explanations and DNS server ordering) says *which* entry matched best, in v2ray's order
full > longest suffix > keyword > regexp, with the list file and line it came from.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache
from typing import Literal

import attrs

from ..geo.geosite import GeositeRule
from .regexkeys import KEY_LENGTH, regexp_key, regexp_prefilter

__all__ = ["DomainIndex", "DomainIndexBuilder", "DomainMatch", "DomainMatcher", "MatchKind"]

MatchKind = Literal["full", "domain", "keyword", "regexp"]
_KIND_ORDER = {"full": 0, "domain": 1, "keyword": 2, "regexp": 3}
_Origin = tuple[str, GeositeRule]  # (config entry, e.g. "geosite:google"; the rule)


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


@attrs.frozen
class _Regexp:
    compiled: re.Pattern[str]
    mask: int
    literal: str  # a substring every match contains ("" if none is known): ~40 ns to test
    dotless: bool  # matches only names without a dot (geosite:private's last regexp)


@attrs.define
class _Group:
    full: dict[str, _Origin] = attrs.Factory(dict)
    suffix: dict[str, _Origin] = attrs.Factory(dict)
    keywords: dict[str, _Origin] = attrs.Factory(dict)
    regexps: dict[str, _Origin] = attrs.Factory(dict)


class DomainIndexBuilder:
    """Collects rules per group; :meth:`build` freezes them into a :class:`DomainIndex`."""

    def __init__(self) -> None:
        self.groups: list[_Group] = []

    def new_group(self) -> int:
        self.groups.append(_Group())
        return len(self.groups) - 1

    def add(self, group: int, rule: GeositeRule, source: str) -> None:
        """Add one rule; the first of equal patterns in a group keeps its origin.

        Raises ``re.error`` for a bad regexp (list files are checked when parsed; this
        is for inline entries).
        """
        table = {
            "full": self.groups[group].full,
            "domain": self.groups[group].suffix,
            "keyword": self.groups[group].keywords,
            "regexp": self.groups[group].regexps,
        }[rule.kind]
        if rule.kind == "regexp":
            re.compile(rule.value)
        table.setdefault(rule.value, (source, rule))

    def build(self, cache_size: int = 0) -> DomainIndex:
        return DomainIndex(self.groups, cache_size)


class DomainIndex:
    """The frozen index; see the module docstring. ``cache_size`` > 0 adds a bounded LRU
    of domain -> mask (real traffic repeats domains; benchmarks report both)."""

    def __init__(self, groups: list[_Group], cache_size: int = 0) -> None:
        self._groups = groups
        self._full: dict[str, int] = {}
        self._suffix: dict[str, int] = {}
        keywords: dict[str, int] = {}
        regexps: dict[str, int] = {}
        for number, group in enumerate(groups):
            bit = 1 << number
            for value in group.full:
                self._full[value] = self._full.get(value, 0) | bit
            for value in group.suffix:
                self._add_suffix(value, bit)
            for value in group.keywords:
                keywords[value] = keywords.get(value, 0) | bit
            for value in group.regexps:
                regexps[value] = regexps.get(value, 0) | bit
        self._keywords = tuple(keywords.items())
        self._regexp_groups = 0
        tld: dict[str, list[_Regexp]] = {}
        sld: dict[str, list[_Regexp]] = {}
        unkeyed: list[_Regexp] = []
        for pattern, mask in regexps.items():
            self._regexp_groups |= mask
            key = regexp_key(pattern)
            literals, dotless = regexp_prefilter(pattern)
            # A literal that says more than the key: ".com" after the key "com" does not.
            useful = [lit for lit in literals if key is None or lit.strip(".") != key[2]]
            rx = _Regexp(re.compile(pattern), mask, useful[0] if useful else "", dotless)
            if key is not None and key[:2] == ("start", 2):
                sld.setdefault(key[2], []).append(rx)
            elif key is not None and key[0] == "full" and len(rx.literal) < KEY_LENGTH:
                tld.setdefault(key[2], []).append(rx)
            else:  # a TLD with a better literal, deeper labels, no key: the literal gate
                unkeyed.append(rx)
        self._tld = {k: tuple(v) for k, v in tld.items()}
        self._sld = {k: tuple(v) for k, v in sld.items()}
        # Unkeyed regexps with a literal run only if one combined search finds a literal.
        self._gated = tuple(rx for rx in unkeyed if rx.literal)
        self._ungated = tuple(rx for rx in unkeyed if not rx.literal)
        self._gate = (
            re.compile("|".join(sorted({re.escape(rx.literal) for rx in self._gated})))
            if self._gated
            else None
        )
        self._keyed_count = len(regexps) - len(unkeyed)
        self.mask: Callable[[str], int] = (
            lru_cache(maxsize=cache_size)(self._mask) if cache_size > 0 else self._mask
        )

    @property
    def group_count(self) -> int:
        return len(self._groups)

    def _add_suffix(self, value: str, bit: int) -> None:
        self._suffix[value] = self._suffix.get(value, 0) | bit
        dot = value.find(".")
        while dot >= 0:
            self._suffix.setdefault(value[dot + 1 :], 0)  # marker: "longer ones exist"
            dot = value.find(".", dot + 1)

    def _mask(self, domain: str) -> int:
        """Bit ``g`` set iff group ``g`` matches ``domain`` (normalised, lower-case)."""
        mask = self._full.get(domain, 0)
        suffix = self._suffix
        end = len(domain)
        while True:
            dot = domain.rfind(".", 0, end)
            found = suffix.get(domain[dot + 1 :])
            if found is None:
                break
            mask |= found
            if dot < 0:
                break
            end = dot
        for keyword, bits in self._keywords:
            if bits & ~mask and keyword in domain:
                mask |= bits
        if not self._regexp_groups & ~mask:
            return mask
        # Regexps keyed by the last label, or by the first characters of the one before.
        last = domain.rfind(".")
        if hit := self._tld.get(domain[last + 1 :]):
            mask = _search(hit, domain, mask)
        if last > 0:
            start = domain.rfind(".", 0, last) + 1
            key = domain[start : start + KEY_LENGTH]
            if last - start >= KEY_LENGTH and (hit := self._sld.get(key)):
                mask = _search(hit, domain, mask)
        if self._gate is not None and self._gate.search(domain):
            mask = _search(self._gated, domain, mask)
        if self._ungated:
            mask = _search(self._ungated, domain, mask)
        return mask

    def best(self, domain: str, group: int) -> DomainMatch | None:
        """The best entry of ``group`` matching ``domain`` (slow path: no index)."""
        g = self._groups[group]
        if domain in g.full:
            return _match("full", domain, g.full[domain])
        candidate = domain
        while True:  # longest suffix first
            if candidate in g.suffix:
                return _match("domain", candidate, g.suffix[candidate])
            dot = candidate.find(".")
            if dot < 0:
                break
            candidate = candidate[dot + 1 :]
        for keyword, origin in g.keywords.items():
            if keyword in domain:
                return _match("keyword", keyword, origin)
        for pattern, origin in g.regexps.items():
            if re.search(pattern, domain):
                return _match("regexp", pattern, origin)
        return None

    def sizes(self) -> dict[str, int]:
        return {
            "full": len(self._full),
            "suffix_keys": len(self._suffix),
            "keywords": len(self._keywords),
            "regexps_keyed": self._keyed_count,
            "regexps_unkeyed": len(self._gated) + len(self._ungated),
        }


def _search(candidates: tuple[_Regexp, ...], domain: str, mask: int) -> int:
    for rx in candidates:
        if (
            rx.mask & ~mask
            and rx.literal in domain
            and not (rx.dotless and "." in domain)
            and rx.compiled.search(domain)
        ):
            mask |= rx.mask
    return mask


def _match(kind: MatchKind, pattern: str, origin: _Origin) -> DomainMatch:
    source, rule = origin
    return DomainMatch(kind, pattern, source, rule.location if rule.file else None)


class DomainMatcher:
    """One group of an index: what DNS servers and sniffing exclusions hold."""

    def __init__(self, index: DomainIndex, group: int, entries: tuple[str, ...]) -> None:
        self.index = index
        self.group = group
        self.bit = 1 << group
        self.entries = entries

    def matches(self, domain: str) -> bool:
        return bool(self.index.mask(domain) & self.bit)

    def best(self, domain: str) -> DomainMatch | None:
        return self.index.best(domain, self.group)

    def __str__(self) -> str:
        return "[" + ", ".join(self.entries) + "]"
