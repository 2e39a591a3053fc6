"""A tiny sd_notify client: tells systemd (Type=notify) when the gateway is ready.

Only active when $NOTIFY_SOCKET is set: a filesystem path, or an abstract socket when
it starts with '@'. Sending never raises; the first failure is logged at debug level.
"""

from __future__ import annotations

import logging
import os
import socket
import time

import trio

log = logging.getLogger("trio_tproxy.notify")


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        if address is None:
            address = os.environ.get("NOTIFY_SOCKET") or None
        if address is not None and address.startswith("@"):
            address = "\0" + address[1:]
        self.address = address
        self._sock: socket.socket | None = None
        self._failure_logged = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send one datagram of 'KEY=value' lines; True if it went out."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self._failure_logged:
                log.debug("sd_notify to %r failed: %s", self.address, exc)
                self._failure_logged = True
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog_interval(self) -> float | None:
        """Half of $WATCHDOG_USEC in seconds, when the watchdog is meant for this process."""
        if not self.enabled:
            return None
        try:
            usec = int(os.environ.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        pid = os.environ.get("WATCHDOG_PID")
        if usec <= 0 or (pid and pid != str(os.getpid())):
            return None
        return usec / 2_000_000

    async def watchdog(self, interval: float) -> None:
        while True:
            self.send("WATCHDOG=1")
            await trio.sleep(interval)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
