"""The domain-list-community file format: one list file -> rules, includes, affiliations.

Format (v2fly/domain-list-community README "Structure of data" and main.go; see
reference/v2ray-semantics.md section 3): one file per list, the file name is the list name.
A line is ``TYPE:VALUE`` (``domain`` when there is no prefix; also ``full``, ``keyword``,
``regexp``) or ``include:LIST``, followed by ``@attr`` tokens (on an include: ``@attr``
keeps entries carrying it, ``@-attr`` drops them) and, on a rule, ``&LIST`` affiliations
that make the rule part of LIST as well. ``#`` starts a comment anywhere on a line.

Values are lower-cased (regexps are kept as written: targets are lower-case anyway and
lower-casing ``\\D`` would change its meaning). Every problem is reported as
``file:line: message``, all of a file at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal, NamedTuple

import attrs

__all__ = [
    "FileBuilder", "GeositeError", "GeositeFile", "GeositeRule", "Include", "RuleKind",
    "content_lines", "parse_geosite_line", "parse_geosite_text", "valid_list_name",
]  # fmt: skip

RuleKind = Literal["domain", "full", "keyword", "regexp"]
_KINDS: frozenset[str] = frozenset({"domain", "full", "keyword", "regexp"})
_LIST_NAME = re.compile(r"[a-z0-9][a-z0-9!_-]*")
_ATTR_NAME = re.compile(r"[a-z0-9!_-]+")
_DOMAIN_CHARS = re.compile(r"[a-z0-9.-]+")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
_DOMAIN = re.compile(r"(?:{label}\.)*{label}".format(label=r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"))
_NO_ATTRS: frozenset[str] = frozenset()
MAX_DOMAIN_LENGTH = 253  # RFC 1035 section 2.3.4, in presentation form without the root dot


class GeositeError(Exception):
    """One or more problems in rule-list files, each ``file:line: message``."""

    def __init__(self, problems: list[str] | tuple[str, ...]) -> None:
        self.problems: tuple[str, ...] = tuple(problems)
        super().__init__("\n".join(self.problems))


class GeositeRule(NamedTuple):
    """One domain rule of a list, with where it was written (for ``match`` explanations).

    A named tuple rather than an attrs class: a big configuration holds 35,000 of these
    and builds them in well under a second.
    """

    kind: RuleKind
    value: str
    attrs: frozenset[str]
    file: str
    line: int

    @property
    def location(self) -> str:
        """``file:line``; a rule of a .dat has no line (0): ``list NAME of FILE``."""
        return f"{self.file}:{self.line}" if self.line else self.file

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


@attrs.frozen
class Include:
    """``include:NAME @with @-without``: NAME's entries that carry every ``with`` attribute
    and none of the ``without`` ones."""

    name: str
    with_attrs: frozenset[str]
    without_attrs: frozenset[str]
    file: str
    line: int

    def selects(self, rule: GeositeRule) -> bool:
        return self.with_attrs <= rule.attrs and not (self.without_attrs & rule.attrs)


@attrs.frozen
class GeositeFile:
    name: str
    rules: tuple[GeositeRule, ...]
    includes: tuple[Include, ...]
    affiliations: tuple[tuple[str, GeositeRule], ...]  # (other list, rule written here)


def valid_list_name(name: str) -> bool:
    """List names are file names in one directory: a-z, 0-9, "!", "-", "_" (no dots, so
    README.md, LICENSE and update.py beside the lists are not lists)."""
    return _LIST_NAME.fullmatch(name) is not None


def _check_domain(value: str) -> str | None:
    if len(value) <= MAX_DOMAIN_LENGTH and _DOMAIN.fullmatch(value):
        return None
    if not _DOMAIN_CHARS.fullmatch(value):
        return "only a-z, 0-9, '.' and '-' are allowed"
    if len(value) > MAX_DOMAIN_LENGTH:
        return f"longer than {MAX_DOMAIN_LENGTH} characters"
    for label in value.split("."):
        if not _LABEL.fullmatch(label):
            return f"bad label {label!r} (1-63 characters, no leading or trailing '-')"
    return None


def _check_value(kind: str, value: str) -> str | None:
    if not value:
        return "empty value"
    if kind in ("domain", "full"):
        return _check_domain(value)
    if kind == "keyword":
        return None if _DOMAIN_CHARS.fullmatch(value) else "only a-z, 0-9, '.' and '-' allowed"
    try:
        re.compile(value)
    except re.error as exc:
        return f"bad regexp: {exc}"
    except (OverflowError, RecursionError):
        return "bad regexp: too large"
    return None


def parse_geosite_line(
    text: str, file: str, line: int, out: FileBuilder, problems: list[str]
) -> None:
    tokens = text.split()
    head, *tail = tokens
    if not tail and ":" not in head:  # the common line: a bare domain
        value = head.lower()
        if _check_domain(value) is None:
            out.rules.append(GeositeRule("domain", value, _NO_ATTRS, file, line))
            return
    where = f"{file}:{line}"
    prefix, sep, value = head.partition(":")
    kind = prefix.lower() if sep else "domain"
    value = value if sep else head
    if kind == "include":
        _parse_include(
            value.lower(), tail, where=where, file=file, line=line, out=out, problems=problems
        )
        return
    if kind not in _KINDS:
        problems.append(f"{where}: unknown rule type {prefix!r} (domain, full, keyword, regexp)")
        return
    if kind != "regexp":
        value = value.lower()
    if (problem := _check_value(kind, value)) is not None:
        problems.append(f"{where}: {kind}:{value}: {problem}")
        return
    attrs_: set[str] = set()
    affiliations: list[str] = []
    for token in tail:
        name = token[1:].lower()
        if token.startswith("@") and _ATTR_NAME.fullmatch(name):
            attrs_.add(name)
        elif token.startswith("&") and valid_list_name(name):
            affiliations.append(name)
        else:
            problems.append(f"{where}: bad attribute or affiliation {token!r} (@attr, &list)")
            return
    found = frozenset(attrs_) if attrs_ else _NO_ATTRS
    rule = GeositeRule(kind, value, found, file, line)  # type: ignore[arg-type]
    out.rules.append(rule)
    out.affiliations.extend((name, rule) for name in affiliations)


def _parse_include(
    name: str,
    tail: list[str],
    *,
    where: str,
    file: str,
    line: int,
    out: FileBuilder,
    problems: list[str],
) -> None:
    if not valid_list_name(name):
        problems.append(f"{where}: bad list name in include:{name}")
        return
    with_attrs: set[str] = set()
    without_attrs: set[str] = set()
    for token in tail:
        negative = token.startswith("@-")
        attr = token[2:] if negative else token[1:]
        if not token.startswith("@") or not _ATTR_NAME.fullmatch(attr.lower()):
            problems.append(f"{where}: bad include filter {token!r} (@attr or @-attr)")
            return
        (without_attrs if negative else with_attrs).add(attr.lower())
    out.includes.append(Include(name, frozenset(with_attrs), frozenset(without_attrs), file, line))


@attrs.define
class FileBuilder:
    """What the lines of one file add up to, while parsing."""

    rules: list[GeositeRule] = attrs.Factory(list)
    includes: list[Include] = attrs.Factory(list)
    affiliations: list[tuple[str, GeositeRule]] = attrs.Factory(list)


def content_lines(text: str) -> Iterator[tuple[int, str]]:
    for number, raw in enumerate(text.splitlines(), start=1):
        content = raw.partition("#")[0].strip()
        if content:
            yield number, content


def parse_geosite_text(text: str, name: str, file: str) -> GeositeFile:
    """Parse one list file; raises :class:`GeositeError` listing every bad line."""
    out = FileBuilder()
    problems: list[str] = []
    for number, content in content_lines(text):
        parse_geosite_line(content, file, number, out, problems)
    if problems:
        raise GeositeError(problems)
    return GeositeFile(name, tuple(out.rules), tuple(out.includes), tuple(out.affiliations))
