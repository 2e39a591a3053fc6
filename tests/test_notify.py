"""sd_notify: datagrams to $NOTIFY_SOCKET, on a real AF_UNIX socket; never an exception."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from trio_tproxy.notify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def fields(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_messages_reach_the_socket(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = Notifier(path)
    assert notifier.ready("3 active flow(s)")
    assert fields(sock) == ["READY=1", "STATUS=3 active flow(s)"]
    assert notifier.reloading()
    reloading = fields(sock)
    assert reloading[0] == "RELOADING=1"
    assert reloading[1].startswith("MONOTONIC_USEC=") and int(reloading[1].split("=")[1]) > 0
    assert notifier.stopping()
    assert fields(sock) == ["STOPPING=1"]
    notifier.close()


def test_abstract_socket_address() -> None:
    name = f"trio-tproxy-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier("@" + name).ready()
        assert fields(sock) == ["READY=1"]
    finally:
        sock.close()


def test_without_notify_socket_nothing_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.watchdog_interval() is None


def test_a_dead_socket_never_raises(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens"))
    assert not notifier.ready()
    assert not notifier.stopping()  # logged once, still no exception


def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "n"))
    monkeypatch.setenv("WATCHDOG_USEC", "10000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert notifier.watchdog_interval() == 5.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert notifier.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_USEC", "junk")
    monkeypatch.delenv("WATCHDOG_PID")
    assert notifier.watchdog_interval() is None
