"""Index keys for domain regexps: which label of a domain a regexp pins down.

Running 160 regexps per flow costs ~50 us; almost every regexp in domain-list-community
is anchored at the end and spells out its last labels, e.g.
``(^|\\.)aqdk[0-9]{3}\\.com$``: any domain it matches has a second-level label that
starts with ``aqd``. :func:`regexp_key` derives such a key, so the matcher only runs the
regexps whose key the domain carries: a handful of dict probes instead of 160 searches.

The analysis is deliberately conservative: a top-level scan of the pattern that gives up
(returns ``None``, "run me on every domain") on anything it does not fully understand:
top-level alternation, inline flags, escapes other than the common classes, a ``$`` that
is not last. A key is only derived from tokens that must match literally, and only
within labels whose boundaries are certain (a literal ``\\.``, ``^`` or ``(^|\\.)``, with
nothing in between that could match a dot), so a key can never exclude a domain the
regexp matches; tests check this against ``re`` on random domains.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = ["Prefilter", "RegexpKey", "regexp_key", "regexp_prefilter"]

# ("full" | "start" | "end", label number from the right (1 = last label), text)
# full: that label equals text; start/end: it begins/ends with text (3 characters).
RegexpKey = tuple[Literal["full", "start", "end"], int, str]
KEY_LENGTH = 3
_QUANTIFIER = re.compile(r"(?:[*+?]|\{\d*(?:,\d*)?\})[?+]?")
_BOUNDARY_GROUPS = frozenset({r"(^|\.)", r"(?:^|\.)", r"(\.|^)", r"(?:\.|^)"})
_NODOT_ESCAPES = frozenset("dw")
_ANY_ESCAPES = frozenset("DWsS")  # \s cannot match a dot, but it is never in a domain


class _GiveUp(Exception):
    pass


# Tokens: ("lit", c) a literal character other than "."; ("dot",) a literal "."; ("bound",)
# the start of a label; ("end",) the end of the domain; ("nodot",) something that never
# matches a dot; ("any",) something that may.
_Token = tuple[str, ...]


def _class_end(pattern: str, i: int) -> int:
    """Index just past the ``]`` closing the class that opens at ``pattern[i]``."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    if j >= len(pattern):
        raise _GiveUp
    return j + 1


def _class_may_match_dot(body: str) -> bool:
    if body.startswith("^") or "." in body or any(f"\\{c}" in body for c in "DWSs"):
        return True
    return any(ord(a) <= 0x2E <= ord(b) for a, b in re.findall(r"(.)-(.)", body))


def _group_end(pattern: str, i: int) -> int:
    depth, j = 0, i
    while j < len(pattern):
        c = pattern[j]
        if c == "\\":
            j += 2
            continue
        if c == "[":
            j = _class_end(pattern, j)
            continue
        if c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return j + 1
        j += 1
    raise _GiveUp


def _group_token(text: str) -> _Token | None:
    if text in _BOUNDARY_GROUPS:
        return ("bound",)
    if text.startswith(("(?=", "(?!", "(?<=", "(?<!")):
        return None  # zero-width: contributes nothing, but breaks literal runs
    if text.startswith("(?") and not text.startswith(("(?:", "(?P<")):
        raise _GiveUp  # inline flags change what literals mean
    body = text[1:-1]
    may_dot = "." in body or any(f"\\{c}" in body for c in "DWSs") or "[^" in body
    return ("any",) if may_dot else ("nodot",)


def _escape_token(c: str) -> _Token | None:
    if c == ".":
        return ("dot",)
    if c in _NODOT_ESCAPES:
        return ("nodot",)
    if c in _ANY_ESCAPES:
        return ("any",)
    if c in "bB":
        return None
    if c == "A":
        return ("bound",)
    if c == "Z":
        return ("end",)
    if c.isalnum():
        raise _GiveUp  # \x41, \u..., back-references: not worth understanding
    return ("lit", c)


def _tokens(pattern: str) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        token: _Token | None
        if c == "\\":
            if i + 1 >= len(pattern):
                raise _GiveUp
            token, i = _escape_token(pattern[i + 1]), i + 2
        elif c == "[":
            end = _class_end(pattern, i)
            token = ("any",) if _class_may_match_dot(pattern[i + 1 : end - 1]) else ("nodot",)
            i = end
        elif c == "(":
            end = _group_end(pattern, i)
            token, i = _group_token(pattern[i:end]), end
        elif c in {"|", ")"}:
            raise _GiveUp
        else:
            token = {".": ("any",), "^": ("bound",), "$": ("end",)}.get(c, ("lit", c))
            i += 1
        quantifier = _QUANTIFIER.match(pattern, i)
        if quantifier:
            i = quantifier.end()
            if token is None or token[0] in ("bound", "end"):
                raise _GiveUp
            token = ("any",) if token[0] in ("dot", "any") else ("nodot",)
        if token is not None:
            tokens.append(token)
    return tokens


def _keys_from_tail(tokens: list[_Token]) -> list[RegexpKey]:
    """Keys of the labels spelled out before the final ``$``, walking right to left."""
    keys: list[RegexpKey] = []
    number, label = 1, list[_Token]()  # tokens of the current label, right to left
    for token in reversed(tokens[:-1]):
        kind = token[0]
        if kind in ("dot", "bound"):
            keys.extend(_label_keys(number, label[::-1], start_known=True))
            if kind == "bound":
                return keys
            number, label = number + 1, []
        elif kind in ("any", "end"):
            break
        else:
            label.append(token)
    keys.extend(_label_keys(number, label[::-1], start_known=False))
    return keys


def _label_keys(number: int, label: list[_Token], start_known: bool) -> list[RegexpKey]:
    text = "".join(t[1] if t[0] == "lit" else "\0" for t in label)
    if start_known and label and "\0" not in text:
        return [("full", number, text)]
    keys: list[RegexpKey] = []
    prefix, suffix = text.split("\0")[0], text.split("\0")[-1]
    if start_known and len(prefix) >= KEY_LENGTH:
        keys.append(("start", number, prefix[:KEY_LENGTH]))
    if len(suffix) >= KEY_LENGTH:
        keys.append(("end", number, suffix[-KEY_LENGTH:]))
    return keys


def _score(key: RegexpKey) -> int:
    kind, number, text = key
    # The last label is a TLD shared by many regexps: the weakest key there is.
    base = 10 if number == 1 else 100
    return base + (50 if kind == "full" else 0) + len(text)


def regexp_key(pattern: str) -> RegexpKey | None:
    """The most selective key of ``pattern``, or ``None`` if it must run on every domain."""
    try:
        tokens = _tokens(pattern)
    except _GiveUp:
        return None
    if not tokens or tokens[-1] != ("end",) or ("end",) in tokens[:-1]:
        return None
    keys = _keys_from_tail(tokens)
    return max(keys, key=_score) if keys else None


# For regexps without a key: (a literal every match contains, or ""; True if the
# regexp only matches dotless domains, e.g. geosite:private's "^[a-z]...$").
Prefilter = tuple[str, bool]


def regexp_prefilter(pattern: str) -> Prefilter:
    try:
        tokens = _tokens(pattern)
    except _GiveUp:
        return "", False
    best, run = "", ""
    for token in tokens:
        if token[0] in ("lit", "dot"):
            run += token[1] if token[0] == "lit" else "."
            best = max(best, run, key=len)
        else:
            run = ""
    dotless = (
        pattern.startswith("^")
        and bool(tokens)
        and tokens[-1] == ("end",)
        and all(t[0] in ("lit", "nodot") for t in tokens[1:-1])
    )
    return best, dotless
