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

__all__ = ["Prefilter", "RegexpKey", "regexp_anchored_at_end", "regexp_key", "regexp_prefilter"]

# ("full", 1, tld): the last label equals tld; ("start", n, abc): label n from the right
# (n >= 2) begins with the three characters abc; ("end", n, xyz): it ends with them.
RegexpKey = tuple[Literal["full", "start", "end"], int, str]
KEY_LENGTH = 3
# As sre_parse reads them: "{}" is two literal characters, "{,}" means "*".
_QUANTIFIER = re.compile(r"(?:[*+?]|\{(?:\d+(?:,\d*)?|,\d*)\})[?+]?")
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


def _may_match_dot(body: str) -> bool:
    """Whether a class body or group body could match ".": yes unless it is made only of
    characters, ``\\d``/``\\w`` and classes whose ranges all avoid the dot."""
    plain = body.replace("\\d", "").replace("\\w", "")
    if "\\" in plain or "." in plain or "[^" in plain or body.startswith("^"):
        return True  # an escape we do not model (\x2e, \S, ...), a dot, a negation
    return any(ord(a) <= 0x2E <= ord(b) for a, b in re.findall(r"(.)-(.)", plain))


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
        return None  # zero-width: no token; the characters around it stay adjacent
    if text.startswith("(?") and not text.startswith(("(?:", "(?P<")):
        raise _GiveUp  # inline flags change what literals mean
    body = text[1:-1].removeprefix("?:")
    if body.startswith("?P<"):
        body = body[body.index(">") + 1 :]
    return ("any",) if _may_match_dot(body) else ("nodot",)


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
            token = ("any",) if _may_match_dot(pattern[i + 1 : end - 1]) else ("nodot",)
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
    """The last label is keyed by its whole text (a TLD); others by their first three
    characters, or their last three (a label before a literal dot ends there, even when
    its start is unknown), which keeps the probes per domain at one per label number."""
    text = "".join(t[1] if t[0] == "lit" else "\0" for t in label)
    if number == 1:
        return [("full", 1, text)] if start_known and label and "\0" not in text else []
    keys: list[RegexpKey] = []
    prefix, suffix = text.split("\0")[0], text.split("\0")[-1]
    if start_known and len(prefix) >= KEY_LENGTH:
        keys.append(("start", number, prefix[:KEY_LENGTH]))
    if len(suffix) >= KEY_LENGTH:
        keys.append(("end", number, suffix[-KEY_LENGTH:]))
    return keys


def _score(key: RegexpKey) -> int:
    # The last label is a TLD shared by many regexps: the weakest key there is. Label
    # starts are a little more varied than label ends ("api", "cdn" end many names).
    return 10 if key[1] == 1 else 100 - 2 * key[1] + (key[0] == "start")


def regexp_key(pattern: str) -> RegexpKey | None:
    """The most selective key of ``pattern``, or ``None`` if it must run on every domain."""
    try:
        tokens = _tokens(pattern)
    except _GiveUp:
        return None
    if not _ends_once(tokens):
        return None
    keys = _keys_from_tail(tokens)
    return max(keys, key=_score) if keys else None


def _ends_once(tokens: list[_Token]) -> bool:
    return bool(tokens) and tokens[-1] == ("end",) and ("end",) not in tokens[:-1]


def regexp_anchored_at_end(pattern: str) -> bool:
    """Whether every match of ``pattern`` ends at the end of the domain."""
    try:
        return _ends_once(_tokens(pattern))
    except _GiveUp:
        return False


# (literals every match contains, longest first; True if the regexp only matches
# dotless names, e.g. geosite:private's "^[a-z]...$").
Prefilter = tuple[tuple[str, ...], bool]


def regexp_prefilter(pattern: str) -> Prefilter:
    try:
        tokens = _tokens(pattern)
    except _GiveUp:
        return (), False
    runs, run = [], ""
    for token in (*tokens, ("any",)):
        if token[0] in ("lit", "dot"):
            run += token[1] if token[0] == "lit" else "."
        elif run:
            runs.append(run)
            run = ""
    dotless = (
        pattern.startswith("^")
        and bool(tokens)
        and tokens[-1] == ("end",)
        and all(t[0] in ("lit", "nodot") for t in tokens[1:-1])
    )
    return tuple(sorted(runs, key=len, reverse=True)), dotless
