"""Geosite lists: resolving ``geosite:NAME`` from a directory of list files, lazily.

The file format is in :mod:`.dlc`; this module follows ``include:`` (with its attribute
filters) and ``&NAME`` affiliations, detects include cycles and reports a missing list or
include at the line that names it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from .dlc import (
    FileBuilder,
    GeositeError,
    GeositeFile,
    GeositeRule,
    Include,
    content_lines,
    parse_geosite_line,
    parse_geosite_text,
    valid_list_name,
)  # fmt: skip

__all__ = [
    "GeositeError", "GeositeFile", "GeositeLoader", "GeositeRule", "Include",
    "parse_geosite_text", "valid_list_name",
]  # fmt: skip


class GeositeLoader:
    """Reads lists from one directory on demand and caches what it parsed.

    A list is its own file's rules, plus the rules other files affiliate to it with
    ``&NAME``, plus its includes (recursively, filtered by the include's attributes).
    Affiliations can come from any file, so the first resolution reads every file of the
    directory once and searches it for ``&`` (only lines carrying ``&`` outside a comment
    are parsed): ~80 ms of CPU for the 1,438 files of the shipped ``rules/`` or the 1,536
    of a full checkout, mostly the reads. The texts are kept until their list is parsed,
    so no file is read twice.
    """

    def __init__(self, rules_dir: Path) -> None:
        self.rules_dir = rules_dir
        self._files: dict[str, GeositeFile | None] = {}
        self._closures: dict[str, tuple[GeositeRule, ...]] = {}
        self._affiliated: dict[str, list[GeositeRule]] | None = None
        self._texts: dict[str, str] = {}  # read by the affiliation scan, parsed on demand

    def path_of(self, name: str) -> Path:
        return self.rules_dir / name

    def exists(self, name: str) -> bool:
        name = name.lower()
        if not valid_list_name(name):
            return False
        return self._file(name) is not None or name in self._affiliations()

    def _file(self, name: str) -> GeositeFile | None:
        """The parsed file, ``None`` if there is no such file; cached."""
        if name not in self._files:
            path = self.path_of(name)
            try:
                text = self._texts.pop(name, None) or path.read_text(encoding="utf-8")
            except FileNotFoundError:
                self._files[name] = None
                return None
            except (OSError, UnicodeDecodeError) as exc:
                raise GeositeError([f"{path}: cannot read: {exc}"]) from None
            self._files[name] = parse_geosite_text(text, name, str(path))
        return self._files[name]

    def _affiliations(self) -> dict[str, list[GeositeRule]]:
        if self._affiliated is None:
            self._affiliated = self._scan_affiliations()
        return self._affiliated

    def _scan_affiliations(self) -> dict[str, list[GeositeRule]]:
        found: dict[str, list[GeositeRule]] = {}
        problems: list[str] = []
        try:
            paths = sorted(p for p in self.rules_dir.iterdir() if p.is_file())
        except OSError:
            return found
        for path in paths:
            if not valid_list_name(path.name):
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # reported if and when that list itself is loaded
            self._texts[path.name] = text
            if "&" not in text:
                continue
            for number, content in content_lines(text):
                if "&" not in content:
                    continue
                out = FileBuilder()
                parse_geosite_line(content, str(path), number, out, problems)
                for other, rule in out.affiliations:
                    found.setdefault(other, []).append(rule)
        if problems:
            raise GeositeError(problems)
        return found

    def resolve(self, name: str) -> tuple[GeositeRule, ...]:
        """Every rule of list ``name`` (case-insensitive), includes flattened.

        Raises :class:`GeositeError` for a missing list (or include), an include cycle or
        a bad line in any file involved.
        """
        name = name.lower()
        if not valid_list_name(name) or not self.exists(name):
            raise GeositeError([f"no list {name!r} (no file {self.path_of(name)})"])
        return tuple(_dedupe(self._closure(name, (name,))))

    def _closure(self, name: str, chain: tuple[str, ...]) -> tuple[GeositeRule, ...]:
        """``chain`` is the include path from the requested list down to ``name``."""
        if name in self._closures:
            return self._closures[name]
        parsed = self._file(name)
        rules: list[GeositeRule] = list(parsed.rules) if parsed else []
        rules.extend(self._affiliations().get(name, ()))
        for inc in parsed.includes if parsed else ():
            rules.extend(r for r in self._included(inc, chain) if inc.selects(r))
        result = tuple(rules)
        self._closures[name] = result
        return result

    def _included(self, inc: Include, chain: tuple[str, ...]) -> tuple[GeositeRule, ...]:
        if inc.name in chain:
            route = " -> ".join((*chain, inc.name))
            raise GeositeError([f"{inc.file}:{inc.line}: include cycle: {route}"])
        if not self.exists(inc.name):
            raise GeositeError(
                [f"{inc.file}:{inc.line}: include:{inc.name}: no such list"
                 f" (no file {self.path_of(inc.name)})"]
            )  # fmt: skip
        return self._closure(inc.name, (*chain, inc.name))


def _dedupe(rules: tuple[GeositeRule, ...]) -> Iterator[GeositeRule]:
    seen: set[tuple[str, str, frozenset[str]]] = set()
    for rule in rules:
        key = (rule.kind, rule.value, rule.attrs)
        if key not in seen:
            seen.add(key)
            yield rule
