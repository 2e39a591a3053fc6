from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from netlab import Lab, requirements_met


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh client/gateway/server lab (~0.1 s), torn down even if the test fails."""
    reason = requirements_met()
    if reason is not None:
        pytest.skip(reason)
    with Lab.create(prefix="tpt") as built:
        yield built


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "hello.txt").write_text("hello from the server\n")
    return root
