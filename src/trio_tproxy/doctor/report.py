"""Findings: one line per check, ✔ / ✘ / ⚠, and for each ✘ the command that fixes it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import attrs

Status = Literal["ok", "fail", "warn"]
MARKS: dict[Status, str] = {"ok": "✔", "fail": "✘", "warn": "⚠"}


@attrs.frozen
class Finding:
    status: Status
    subject: str  # "policy routing IPv4", "inbound 'tproxy-in'"
    text: str  # what was seen
    fix: str = ""  # the command (or setting) that fixes it; for ✘ and ⚠

    def line(self) -> str:
        fix = f" — fix: {self.fix}" if self.fix else ""
        return f"{MARKS[self.status]} {self.subject}: {self.text}{fix}"


def ok(subject: str, text: str) -> Finding:
    return Finding("ok", subject, text)


def fail(subject: str, text: str, fix: str) -> Finding:
    return Finding("fail", subject, text, fix)


def warn(subject: str, text: str, fix: str = "") -> Finding:
    return Finding("warn", subject, text, fix)


def render(findings: Iterable[Finding]) -> str:
    return "".join(f"{finding.line()}\n" for finding in findings)


def exit_code(findings: Iterable[Finding]) -> int:
    """1 when anything failed (⚠ does not), else 0."""
    return 1 if any(finding.status == "fail" for finding in findings) else 0
