"""What an import left out, and a reader of the source that notices what it skipped.

Nothing may be dropped silently: every construct without an equivalent becomes an
:class:`Omission` (its JSON/YAML path and why), printed on stderr one per line. A
:class:`Node` wraps each object of the source; the converter *takes* the keys it
understands, and :meth:`Node.leftovers` reports every key nobody took, so a key this
code has never heard of is reported too instead of vanishing.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import attrs


class UnreadableInput(Exception):
    """The source is not a config at all (bad JSON/YAML, not an object, unreadable)."""


@attrs.frozen
class Omission:
    path: str  # "$.outbounds[1].streamSettings.network"
    why: str

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"


@attrs.define
class Report:
    omissions: list[Omission] = attrs.field(factory=list)

    def omit(self, path: str, why: str) -> None:
        self.omissions.append(Omission(path, why))


def child_path(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if key.replace("-", "").replace("_", "").isalnum():
        return f"{path}.{key}"
    return f"{path}[{key!r}]"


def kind(item: object) -> str:
    """How the user would call ``item``'s type in their JSON/YAML."""
    if item is None:
        return "null"
    if isinstance(item, bool):
        return "a boolean"
    if isinstance(item, int | float):
        return "a number"
    if isinstance(item, str):
        return "a string"
    if isinstance(item, list):
        return "a list"
    if isinstance(item, Mapping):
        return "an object"
    return type(item).__name__


class Node:
    """An object of the source with its path; remembers which keys were taken."""

    def __init__(self, raw: Mapping[str, Any], path: str, report: Report) -> None:
        self.raw = raw
        self.path = path
        self.report = report
        self._taken: set[str] = set()

    @classmethod
    def of(cls, item: object, path: str, report: Report) -> Node | None:
        """A node for ``item`` when it is an object; otherwise reported, None."""
        if isinstance(item, Mapping):
            return cls(item, path, report)
        if item is not None:
            report.omit(path, f"expected an object, got {kind(item)}; ignored")
        return None

    def at(self, key: str) -> str:
        return child_path(self.path, key)

    def take(self, key: str, *aliases: str) -> Any:
        """The value of ``key`` (or the first alias present), None when absent."""
        for name in (key, *aliases):
            if name in self.raw:
                self._taken.add(name)
                return self.raw[name]
        return None

    def take_ci(self, key: str) -> Any:
        """``key`` matched case-insensitively (v2ray reads some keys that way)."""
        for name in self.raw:
            if isinstance(name, str) and name.lower() == key.lower():
                self._taken.add(name)
                return self.raw[name]
        return None

    def ignore(self, *keys: str) -> None:
        """Keys that change nothing here (e.g. a user level, a remark)."""
        self._taken.update(keys)

    def node(self, key: str, *aliases: str) -> Node | None:
        found = next((n for n in (key, *aliases) if n in self.raw), key)
        return Node.of(self.take(key, *aliases), self.at(found), self.report)

    def nodes(self, key: str) -> Iterator[Node]:
        """The objects of list ``key`` (a single object counts as a list of one)."""
        items = self.take(key)
        if items is None:
            return
        if isinstance(items, Mapping):
            yield Node(items, self.at(key), self.report)
            return
        if not isinstance(items, list):
            self.report.omit(self.at(key), f"expected a list, got {kind(items)}; ignored")
            return
        for i, item in enumerate(items):
            found = Node.of(item, child_path(self.at(key), i), self.report)
            if found is not None:
                yield found

    def text(self, key: str, *aliases: str) -> str | None:
        item = self.take(key, *aliases)
        if item is None or isinstance(item, str):
            return item
        if isinstance(item, int | float) and not isinstance(item, bool):
            return str(item)
        self.report.omit(self.at(key), f"expected a string, got {kind(item)}; ignored")
        return None

    def number(self, key: str, *aliases: str) -> int | None:
        item = self.take(key, *aliases)
        if item is None:
            return None
        # ASCII digits only: str.isdigit() also takes "¹" and other digits int() refuses
        digits = item.strip() if isinstance(item, str) else ""
        if digits.isascii() and digits.isdigit():
            return int(digits)
        if isinstance(item, int) and not isinstance(item, bool):
            return item
        self.report.omit(self.at(key), f"expected a whole number, got {item!r}; ignored")
        return None

    def duration(self, key: str, unit: float, *, zero: bool = False) -> str | None:
        """A number of ``unit`` seconds in the config's duration syntax; None when absent,
        reported when negative (or zero, unless ``zero`` is allowed)."""
        count = self.number(key)
        if count is None:
            return None
        if count < 0 or (count == 0 and not zero):
            self.report.omit(self.at(key), f"{count} is not a duration; ignored")
            return None
        total = count * unit
        return f"{round(total * 1000)}ms" if total != int(total) else f"{int(total)}s"

    def mark(self, key: str) -> int | None:
        """A firewall mark (SO_MARK): 32 bits, 0 = none; None when absent or zero."""
        mark = self.number(key)
        if mark is not None and not 0 <= mark <= 0xFFFFFFFF:
            self.report.omit(self.at(key), f"mark {mark} is not 0-4294967295; ignored")
            return None
        return mark or None

    def flag(self, key: str, *aliases: str) -> bool | None:
        item = self.take(key, *aliases)
        if item is None or isinstance(item, bool):
            return item
        self.report.omit(self.at(key), f"expected true or false, got {kind(item)}; ignored")
        return None

    def texts(self, key: str, *aliases: str) -> list[str]:
        """A list of strings; a single string counts as a list of one."""
        item = self.take(key, *aliases)
        if item is None:
            return []
        if isinstance(item, str):
            return [item]
        if not isinstance(item, list):
            self.report.omit(self.at(key), f"expected a list, got {kind(item)}; ignored")
            return []
        out = []
        for i, entry in enumerate(item):
            if isinstance(entry, str):
                out.append(entry)
            elif isinstance(entry, int) and not isinstance(entry, bool):
                out.append(str(entry))
            else:
                self.report.omit(child_path(self.at(key), i),
                                 f"expected a string, got {kind(entry)}; ignored")  # fmt: skip
        return out

    def leftovers(self, why: str = "no equivalent here; not converted") -> None:
        """Report every key nobody took."""
        for name in self.raw:
            if name not in self._taken:
                self.report.omit(child_path(self.path, str(name)), why)


@attrs.frozen
class ImportResult:
    toml: str
    omissions: tuple[Omission, ...]
