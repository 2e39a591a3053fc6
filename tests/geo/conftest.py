"""Fixtures for geodata tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def rules_dir(tmp_path: Path) -> Callable[[dict[str, str]], Path]:
    """Write ``{name: text}`` as list files (lines stripped) and return the directory."""

    def make(lists: dict[str, str]) -> Path:
        directory = tmp_path / "rules"
        directory.mkdir(exist_ok=True)
        for name, text in lists.items():
            lines = [line.strip() for line in text.strip().splitlines()]
            (directory / name).write_text("\n".join(lines) + "\n")
        return directory

    return make
