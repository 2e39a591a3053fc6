"""systemd Type=notify end to end: READY=1 once the listener serves, RELOADING=1/READY=1
around SIGHUP, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import ECHO, Gateway


def test_ready_reloading_stopping(
    make_gateway: Callable[..., Gateway], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    monkeypatch.setenv("NOTIFY_SOCKET", path)  # inherited by the gateway process
    try:
        gateway = make_gateway()
        first = sock.recv(4096).decode().split("\n")
        assert first[0] == "READY=1"
        # READY came after the listener was bound: a flow through it works right away
        result = gateway.client("bulk", gateway.lab.server.ip4, ECHO, size=10_000, timeout=10)
        assert result["intact"], result
        os.kill(gateway.proxy.pid, signal.SIGHUP)
        assert sock.recv(4096).decode().startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert sock.recv(4096).decode().split("\n")[0] == "READY=1"
        os.kill(gateway.proxy.pid, signal.SIGTERM)
        assert sock.recv(4096).decode().split("\n")[0] == "STOPPING=1"
    finally:
        sock.close()
