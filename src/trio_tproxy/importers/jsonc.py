"""JSON with comments, read as v2ray reads its config files.

v2ray's reader (``infra/conf/json/reader.go``) drops ``//`` and ``#`` comments up to the
end of the line and ``/* */`` comments, but never inside a double- or single-quoted
string (a backslash escapes the next character there). The comments are replaced by
spaces here, line breaks kept, so a JSON error still names the right line and column.
"""

from __future__ import annotations

import json
from typing import Any

from .report import UnreadableInput, kind

__all__ = ["load_jsonc", "strip_comments"]


def strip_comments(text: str) -> str:
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        char = text[i]
        if char in "\"'":
            end = _string_end(text, i)
            out.append(text[i:end])
            i = end
        elif char == "#" or text.startswith("//", i):
            end = text.find("\n", i)
            end = n if end < 0 else end
            out.append(" " * (end - i))
            i = end
        elif text.startswith("/*", i):
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append("".join(c if c == "\n" else " " for c in text[i:end]))
            i = end
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _string_end(text: str, start: int) -> int:
    """The index just past the string opened at ``start`` (or the end of the text)."""
    quote = text[start]
    i = start + 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == quote:
            return i + 1
        else:
            i += 1
    return len(text)


def load_jsonc(text: str, name: str) -> dict[str, Any]:
    """The config object in ``text``; :class:`UnreadableInput` with one clear line when
    it is not JSON (comments allowed) or not an object."""
    try:
        data = json.loads(strip_comments(text))
    except json.JSONDecodeError as exc:
        raise UnreadableInput(
            f"{name}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (RecursionError, ValueError) as exc:  # nesting too deep; huge integers
        raise UnreadableInput(f"{name}: not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise UnreadableInput(f"{name}: expected a JSON object at the top, got {kind(data)}")
    return data
