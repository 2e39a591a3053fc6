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
full > longest suffix > keyword > regexp, with the list file and line it came from
(route/entries.py).
"""

from __future__ import annotations

import importlib
import pickle
import re
import zlib
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import attrs

from ..geo.geosite import GeositeRule
from .entries import DomainMatch, Entries, MatchKind, PackedEntries
from .regexkeys import KEY_LENGTH, regexp_anchored_at_end, regexp_key, regexp_prefilter

# The width of a pattern comes from the regex parser, private since 3.11 as sre_parse was.
re_parser: Any = importlib.import_module("re._parser")

__all__ = ["DomainIndex", "DomainIndexBuilder", "DomainMatch", "DomainMatcher", "MatchKind"]


@attrs.frozen
class _Regexp:
    compiled: re.Pattern[str]
    mask: int
    literal: str  # a substring every match contains ("" if none is known): ~40 ns to test
    dotless: bool  # matches only names without a dot (geosite:private's last regexp)
    reach: int  # search only the last ``reach`` characters (see _reach)


_ANYWHERE = 1 << 30
# zlib level of the pickled entries: 1 makes conf/main.toml's 850 KB 336 KB in ~9 ms.
GROUPS_COMPRESSION = 1
# (the groups of its regexps, a search for any of them, its reach, the regexps)
_Bucket = tuple[int, Callable[[str, int], "re.Match[str] | None"], int, tuple[_Regexp, ...]]
_Node = tuple[int, "dict[str, _Node] | None"]  # (groups with this suffix, longer suffixes)


class DomainIndexBuilder:
    """Collects rules per group; :meth:`build` freezes them into a :class:`DomainIndex`."""

    def __init__(self) -> None:
        self.groups: list[Entries] = []

    def new_group(self) -> int:
        self.groups.append(Entries())
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

    def build(self, cache_size: int = 0, decisive: int = 0) -> DomainIndex:
        return DomainIndex(self.groups, cache_size, decisive)


class DomainIndex:
    """The frozen index; see the module docstring. ``cache_size`` > 0 adds a bounded LRU
    of domain -> mask (real traffic repeats domains; benchmarks report both)."""

    def __init__(self, groups: list[Entries], cache_size: int = 0, decisive: int = 0) -> None:
        # Packed now, not only when pickled: an entry's origin as one int instead of a
        # (source, GeositeRule) pair keeps a DNS server's geosite:cn (8,000 entries,
        # never cached on disk) ~1 MB smaller for the life of the process.
        self._groups: list[PackedEntries] | None = [PackedEntries.of(g) for g in groups]
        self._groups_blob: bytes | None = None  # the same, pickled (see __getstate__)
        self._group_count = len(groups)
        self._cache_size = cache_size
        self._decisive = decisive
        self._full: dict[str, int] = {}
        self._trie: dict[str, _Node] = {}
        keywords: dict[str, int] = {}
        regexps: dict[str, int] = {}
        suffix_bits: dict[str, int] = {}
        for number, group in enumerate(groups):
            bit = 1 << number
            for value in group.full:
                self._full[value] = self._full.get(value, 0) | bit
            for value in group.suffix:
                suffix_bits[value] = suffix_bits.get(value, 0) | bit
            for value in group.keywords:
                keywords[value] = keywords.get(value, 0) | bit
            for value in group.regexps:
                regexps[value] = regexps.get(value, 0) | bit
        self._suffix_count = len(suffix_bits)
        self._build_trie(suffix_bits)
        self._keywords = tuple(keywords.items())
        self._regexp_groups = 0
        tld: dict[str, list[_Regexp]] = {}
        labels: dict[tuple[str, int], dict[str, list[_Regexp]]] = {}
        unkeyed: list[_Regexp] = []
        for pattern, mask in regexps.items():
            self._regexp_groups |= mask
            key = regexp_key(pattern)
            literals, dotless = regexp_prefilter(pattern)
            # A literal that says more than the key: ".com" after the key "com" does not.
            useful = [lit for lit in literals if key is None or lit.strip(".") != key[2]]
            literal = useful[0] if useful else ""
            rx = _Regexp(re.compile(pattern), mask, literal, dotless, _reach(pattern))
            if key is None or (key[0] == "full" and len(literal) >= KEY_LENGTH):
                unkeyed.append(rx)  # no key, or a TLD with a better literal: the gate
            elif key[0] == "full":
                tld.setdefault(key[2], []).append(rx)
            else:
                labels.setdefault(key[:2], {}).setdefault(key[2], []).append(rx)
        self._tld = {k: _bucket(v) for k, v in tld.items()}
        tables = {key: {k: _bucket(v) for k, v in table.items()} for key, table in labels.items()}
        # The second label's tables are probed inline; deeper labels' in a loop of
        # (label number from the right, True for a key at its start, key -> bucket).
        self._l2_start = tables.pop(("start", 2), {})
        self._l2_end = tables.pop(("end", 2), {})
        self._deeper = tuple(
            (number, kind == "start", table)
            for (kind, number), table in sorted(tables.items(), key=lambda kv: kv[0][1])
        )
        # Unkeyed regexps with a literal run only if one combined search finds a literal.
        self._gated = tuple(rx for rx in unkeyed if rx.literal)
        self._ungated = tuple(rx for rx in unkeyed if not rx.literal)
        self._gate = (
            re.compile("|".join(sorted({re.escape(rx.literal) for rx in self._gated})))
            if self._gated
            else None
        )
        self._gated_groups = _bits(self._gated)
        self._ungated_groups = _bits(self._ungated)
        self._keyed_count = len(regexps) - len(unkeyed)
        self._set_cache()

    def _build_trie(self, suffix_bits: dict[str, int]) -> None:
        """Suffix patterns as a trie of labels, from the right: ``cn`` and ``qq.com`` are
        ``{"cn": (bits, None), "com": (0, {"qq": (bits, None)})}``; a node's bits are the
        groups with exactly that suffix. Leaves share one tuple per distinct bits value."""
        leaves: dict[int, _Node] = {}
        nodes: dict[str | None, dict[str, _Node]] = {None: self._trie}  # suffix -> children

        def split(suffix: str) -> tuple[str, str | None]:  # its first label, its parent
            dot = suffix.find(".")
            return (suffix, None) if dot < 0 else (suffix[:dot], suffix[dot + 1 :])

        def children(suffix: str | None) -> dict[str, _Node]:
            if suffix not in nodes:
                assert suffix is not None
                label, parent = split(suffix)
                siblings = children(parent)
                bits = siblings[label][0] if label in siblings else 0
                nodes[suffix] = {}
                siblings[label] = (bits, nodes[suffix])
            return nodes[suffix]

        # Parents first, so a node that gains children keeps its own bits.
        for value in sorted(suffix_bits, key=lambda v: v.count(".")):
            label, parent = split(value)
            siblings = children(parent)
            bits = suffix_bits[value]
            if label in siblings:  # an inner node already
                siblings[label] = (siblings[label][0] | bits, siblings[label][1])
            else:
                siblings[label] = leaves.setdefault(bits, (bits, None))

    def _set_cache(self) -> None:
        self._mask = _mask_function(self)
        self.mask: Callable[[str], int] = (
            lru_cache(maxsize=self._cache_size)(self._mask) if self._cache_size > 0 else self._mask
        )

    def __getstate__(self) -> dict[str, object]:
        state = self.__dict__.copy()
        del state["mask"], state["_mask"]  # closures: rebuilt on load
        # The entries with their origins answer only best(): `match` explanations and
        # DNS server order, never a routing decision. Pickled as one compressed blob,
        # unpacked by the first best(): a gateway's router (pickled into the compile
        # cache, then loaded from it) keeps ~0.3 MB instead of ~4.7 MB of dicts
        # (conf/main.toml), and a cache load skips unpickling them. This index drops
        # its unpacked copy too: whoever pickles it is done building.
        if self._groups_blob is None:
            assert self._groups is not None
            raw = pickle.dumps(self._groups, pickle.HIGHEST_PROTOCOL)
            self._groups_blob = zlib.compress(raw, GROUPS_COMPRESSION)
        self._groups = None
        state["_groups_blob"], state["_groups"] = self._groups_blob, None
        return state

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__dict__.update(state)
        self._set_cache()

    def _entries(self) -> list[PackedEntries]:
        if self._groups is None:
            assert self._groups_blob is not None
            # our own pickle, made by __getstate__ (the cache loads only private files)
            self._groups = pickle.loads(zlib.decompress(self._groups_blob))  # noqa: S301
        return self._groups

    @property
    def group_count(self) -> int:
        return self._group_count

    def _need(self, mask: int) -> int:
        """The groups whose regexps may still change the answer: unmatched ones, and with
        ``decisive`` bits only those before the first decisive group that matched."""
        need = self._regexp_groups & ~mask
        hit = mask & self._decisive
        return need & ((hit & -hit) - 1) if hit else need

    def best(self, domain: str, group: int) -> DomainMatch | None:
        """The best entry of ``group`` matching ``domain`` (slow path: no index)."""
        return self._entries()[group].best(domain)

    def sizes(self) -> dict[str, int]:
        return {
            "full": len(self._full),
            "suffix": self._suffix_count,
            "keywords": len(self._keywords),
            "regexps_keyed": self._keyed_count,
            "regexps_unkeyed": len(self._gated) + len(self._ungated),
        }


def _mask_function(index: DomainIndex) -> Callable[[str], int]:
    """``index``'s mask function: bit ``g`` set iff group ``g`` matches the domain
    (normalised, lower-case); with ``decisive`` bits, see :meth:`DomainIndex._need`.

    A closure over the index's tables rather than a method: on this path every attribute
    load shows (locals make it ~10 % faster). Rebuilt when an index is unpickled."""
    full = index._full.get
    trie = index._trie
    keywords = index._keywords
    regexp_groups = index._regexp_groups
    decisive = index._decisive
    need_of = index._need
    tld = index._tld.get
    l2_start = index._l2_start.get
    l2_end = index._l2_end.get
    deeper = index._deeper
    gated_groups, gated, gate = index._gated_groups, index._gated, index._gate
    ungated_groups, ungated = index._ungated_groups, index._ungated

    def mask_of(domain: str) -> int:
        mask = full(domain, 0)
        labels = domain.split(".")
        children: dict[str, _Node] | None = trie
        for label in reversed(labels):
            node = children.get(label)  # type: ignore[union-attr]
            if node is None:
                break
            mask |= node[0]
            children = node[1]
            if children is None:
                break
        for keyword, bits in keywords:
            if bits & ~mask and keyword in domain:
                mask |= bits
        need = regexp_groups & ~mask  # as need_of(mask), inline
        if hit := mask & decisive:
            need &= (hit & -hit) - 1
        if not need:
            return mask
        # Regexps keyed by the last label, or by the ends of the labels before it.
        size = len(domain)
        bucket = tld(labels[-1])
        if bucket is not None and bucket[0] & need and bucket[1](domain, size - bucket[2]):
            mask = _search(bucket[3], domain, mask)
            need = need_of(mask)
        count = len(labels)
        if count > 1 and len(label := labels[-2]) >= KEY_LENGTH:
            bucket = l2_start(label[:KEY_LENGTH])
            if bucket is not None and bucket[0] & need and bucket[1](domain, size - bucket[2]):
                mask = _search(bucket[3], domain, mask)
                need = need_of(mask)
            bucket = l2_end(label[-KEY_LENGTH:])
            if bucket is not None and bucket[0] & need and bucket[1](domain, size - bucket[2]):
                mask = _search(bucket[3], domain, mask)
                need = need_of(mask)
        for number, at_start, table in deeper:
            if number > count:
                break
            label = labels[-number]
            if len(label) >= KEY_LENGTH:
                bucket = table.get(label[:KEY_LENGTH] if at_start else label[-KEY_LENGTH:])
                if bucket is not None and bucket[0] & need and bucket[1](domain, size - bucket[2]):
                    mask = _search(bucket[3], domain, mask)
                    need = need_of(mask)
        if gated_groups & need and gate.search(domain):  # type: ignore[union-attr]
            mask = _search(gated, domain, mask)
            need = need_of(mask)
        if ungated_groups & need:
            mask = _search(ungated, domain, mask)
        return mask

    return mask_of


def _search(candidates: tuple[_Regexp, ...], domain: str, mask: int) -> int:
    for rx in candidates:
        if (
            rx.mask & ~mask
            and rx.literal in domain
            and not (rx.dotless and "." in domain)
            # A regexp anchored at the end matches within its last ``reach`` characters;
            # a start before 0 is 0, and "^" / look-behinds still see the real string.
            and rx.compiled.search(domain, len(domain) - rx.reach)
        ):
            mask |= rx.mask
    return mask


def _bits(regexps: tuple[_Regexp, ...] | list[_Regexp]) -> int:
    bits = 0
    for rx in regexps:
        bits |= rx.mask
    return bits


def _bucket(regexps: list[_Regexp]) -> _Bucket:
    """A bucket's regexps, and one search for "does any of them match?" (they rarely do):
    the bits of their groups, and the combined search with its reach."""
    bits = _bits(regexps)
    if len(regexps) == 1:
        return bits, regexps[0].compiled.search, regexps[0].reach, tuple(regexps)
    combined = re.compile("|".join(f"(?:{rx.compiled.pattern})" for rx in regexps))
    return bits, combined.search, max(rx.reach for rx in regexps), tuple(regexps)


def _reach(pattern: str) -> int:
    """How far from the end a match of ``pattern`` can start: its longest width if it
    is anchored at the end, else "anywhere"."""
    if not regexp_anchored_at_end(pattern):
        return _ANYWHERE
    try:
        return min(int(re_parser.parse(pattern).getwidth()[1]), _ANYWHERE)
    except Exception:  # a private module: if it changes, search everything
        return _ANYWHERE


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
