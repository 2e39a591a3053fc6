"""Reading a configuration file: TOML -> structured :class:`Config` -> cross-checks.

The only I/O in this package is reading the file itself; every problem comes back as
:class:`ConfigErrors` (all of them, not just the first).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .checks import check_config
from .convert import structure_config, structure_errors
from .errors import ConfigErrors
from .schema import Config


def parse_config(raw: Mapping[str, Any]) -> Config:
    try:
        cfg = structure_config(raw)
    except Exception as exc:  # cattrs raises an exception *tree*; all of it is reported
        raise ConfigErrors(structure_errors(exc)) from None
    errors = check_config(cfg)
    if errors:
        raise ConfigErrors(errors)
    return cfg


def parse_config_text(text: str) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors.single(f"invalid TOML: {exc}") from None
    return parse_config(raw)


def load_config(path: str | Path) -> Config:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigErrors.single(f"config file not found: {path}", None) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigErrors.single(f"cannot read config file {path}: {exc}", None) from None
    return parse_config_text(text)
