"""A small TOML writer for the configuration documents the importers produce.

There is no TOML writer in the standard library and the documents are simple: tables
and arrays of tables of strings, integers, booleans and lists of those, each with
comment lines. Writing them here keeps the comments where a reader needs them (above
the table or key they explain), which general-purpose writers do not offer.

Strings are TOML basic strings: ``"`` and ``\\`` escaped, control characters as
``\\uXXXX`` (or their short forms), everything else verbatim UTF-8, so any Python
string round-trips through ``tomllib``. Keys that are not bare (``A-Za-z0-9_-``) are
quoted the same way.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence

import attrs

Scalar = str | int | bool | float
Value = Scalar | Sequence[Scalar]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n",
                  "\f": "\\f", "\r": "\\r"}  # fmt: skip


def quote(text: str) -> str:
    """``text`` as a TOML basic string."""
    out = []
    for char in text:
        if char in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        elif 0xD800 <= ord(char) <= 0xDFFF:  # a lone surrogate cannot be written in UTF-8
            out.append("\\uFFFD")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else quote(name)


def value(item: Value) -> str:
    if isinstance(item, bool):  # before int: bool is an int
        return "true" if item else "false"
    if isinstance(item, int | float):
        return repr(item)
    if isinstance(item, str):
        return quote(item)
    return "[" + ", ".join(value(x) for x in item) + "]"


def comment_lines(text: str) -> list[str]:
    """``text`` as ``#`` lines; line breaks and control characters in it cannot end
    the comment early."""
    lines = []
    for line in text.splitlines() or [""]:
        for part in textwrap.wrap(line, 96, break_long_words=False) or [""]:
            lines.append(_comment(part))
    return lines


def _comment(line: str) -> str:
    """One ``#`` line: no control character (TOML forbids them in comments, and a
    line break would end the comment), no lone surrogate (not writable as UTF-8)."""
    clean = "".join("?" if _unwritable(c) else c for c in " ".join(line.split()))
    return f"# {clean}".rstrip()


def _unwritable(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or code == 0x7F or 0xD800 <= code <= 0xDFFF


@attrs.define
class Table:
    """``[header]`` (or ``[[header]]`` when ``array``), its comments and its keys."""

    header: tuple[str, ...] | None  # the dotted header's parts; None: top-level keys
    array: bool = False
    comments: list[str] = attrs.field(factory=list)
    entries: list[tuple[str, Value, str]] = attrs.field(factory=list)  # key, value, comment

    def set(self, name: str, item: Value, comment: str = "") -> None:
        self.entries.append((name, item, comment))

    def note(self, text: str) -> None:
        self.comments.append(text)

    def render(self) -> list[str]:
        lines: list[str] = []
        for text in self.comments:
            lines += comment_lines(text)
        if self.header is not None:
            dotted = ".".join(key(part) for part in self.header)
            lines.append(f"[[{dotted}]]" if self.array else f"[{dotted}]")
        for name, item, text in self.entries:
            line = f"{key(name)} = {value(item)}"
            if text:
                line += "  " + _comment(text)
            lines.append(line)
        return lines


@attrs.define
class Document:
    """A TOML document in the order it is written: a table's keys directly follow its
    header, so sub-tables must be added after their parent's keys."""

    intro: list[str] = attrs.field(factory=list)
    tables: list[Table] = attrs.field(factory=list)

    def table(self, *parts: str, array: bool = False, comment: str = "") -> Table:
        table = Table(parts or None, array)
        if comment:
            table.note(comment)
        self.tables.append(table)
        return table

    def render(self) -> str:
        lines: list[str] = []
        for text in self.intro:
            lines += comment_lines(text)
        for table in self.tables:
            if table.header is not None and not table.entries and not table.array:
                continue  # an empty [x] says nothing
            if lines:
                lines.append("")
            lines += table.render()
        return "\n".join(lines) + "\n"
