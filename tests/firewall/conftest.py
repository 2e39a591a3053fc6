from __future__ import annotations

from collections.abc import Iterator

import pytest

from netlab import Netns, requirements_met, scratch_namespace


@pytest.fixture
def scratch_ns() -> Iterator[Netns]:
    """An empty throwaway namespace (loopback up): rulesets never touch the host."""
    reason = requirements_met()
    if reason is not None:
        pytest.skip(reason)
    with scratch_namespace("tpt") as netns:
        yield netns
