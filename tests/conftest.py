"""Shared fixtures: loopback socket pairs for relay tests, and the namespace lab."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator

import pytest

from netlab import cleanup_stale, requirements_met
from trio_tproxy.router_cache import CACHE_ENV


def pytest_configure(config: pytest.Config) -> None:
    # Commands run by tests (in-process or as subprocesses) keep compiled rules in a
    # directory of this run's, not in the invoking user's ~/.cache.
    cache_dir = tempfile.mkdtemp(prefix="trio-tproxy-test-cache-")
    os.environ[CACHE_ENV] = cache_dir
    config.add_cleanup(lambda: shutil.rmtree(cache_dir, ignore_errors=True))


def pytest_sessionstart(session: pytest.Session) -> None:
    # A crashed earlier run may have left namespaces behind; live labs of concurrent
    # runs hold a lock and are spared.
    if requirements_met() is None:
        cleanup_stale("tpt")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("netns") and (reason := requirements_met()):
        pytest.skip(reason)


@pytest.fixture
def tcp_pairs() -> Iterator[object]:
    """A factory of connected loopback TCP socket pairs, all closed afterwards."""
    made: list[socket.socket] = []

    def make() -> tuple[socket.socket, socket.socket]:
        with socket.create_server(("127.0.0.1", 0)) as server:
            a = socket.create_connection(server.getsockname())
            b, _ = server.accept()
        for s in (a, b):
            s.setblocking(False)
            made.append(s)
        return a, b

    yield make
    for s in made:
        s.close()
