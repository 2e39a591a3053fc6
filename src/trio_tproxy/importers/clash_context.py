"""What the parts of a Clash/mihomo import share: the context (names converted so far),
the YAML loader, and mihomo's address and domain wildcard forms.
"""

from __future__ import annotations

from typing import Any

import attrs
import yaml

from ..config.errors import BadValue
from ..config.values import HostPort
from .draft import Draft, host_port
from .report import Report, UnreadableInput, kind
from .toml_out import Table

__all__ = ["BUILTIN", "ClashContext", "listen_address", "load_yaml", "wildcard_entry"]

BUILTIN = {"DIRECT": "direct", "REJECT": "block", "REJECT-DROP": "block"}


@attrs.define
class ClashContext:
    report: Report
    draft: Draft
    names: dict[str, str] = attrs.field(factory=dict)  # proxy/group/builtin name -> our tag
    tables: dict[str, Table] = attrs.field(factory=dict)
    group_paths: dict[str, str] = attrs.field(factory=dict)  # group tag -> its proxies' path
    used_builtins: set[str] = attrs.field(factory=set)
    inbounds: dict[str, tuple[int, str]] = attrs.field(factory=dict)  # tag -> (port, type)
    mark: int | None = None

    def tag_for(self, name: str) -> str | None:
        """Our tag for a policy name (adding DIRECT/REJECT when first used)."""
        if name in BUILTIN:
            self.used_builtins.add(name)
            return name
        return self.names.get(name)


def load_yaml(text: str, name: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1} column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise UnreadableInput(f"{name}: not valid YAML: {problem}{at}") from None
    except (RecursionError, ValueError, TypeError) as exc:
        raise UnreadableInput(f"{name}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise UnreadableInput(f"{name}: expected a YAML mapping at the top, got {kind(data)}")
    return data


def listen_address(text: str, wildcard: str) -> str | None:
    """mihomo's ``[host]:port`` (``:port`` = every address) as our ``host:port``."""
    host, _, port = text.strip().rpartition(":")
    host = host.strip("[]") or wildcard
    try:
        return str(HostPort.parse(host_port(host, int(port))))
    except (ValueError, BadValue):
        return None


def wildcard_entry(pattern: str) -> str:
    """A mihomo domain wildcard (``+.x``: x and subdomains, ``*.x``: one label,
    ``.x``: subdomains only) in routing domain syntax."""
    if pattern.startswith("+."):
        return f"domain:{pattern[2:]}"
    if pattern.startswith("*.") and "*" not in pattern[2:]:
        body = pattern[2:].replace(".", r"\.")
        return f"regexp:^[^.]+\\.{body}$"
    if pattern.startswith(".") and "*" not in pattern:
        body = pattern[1:].replace(".", r"\.")
        return f"regexp:\\.{body}$"
    if "*" in pattern:
        parts = [p.replace(".", r"\.") for p in pattern.split("*")]
        return "regexp:^" + "[^.]+".join(parts) + "$"
    return f"full:{pattern}"
