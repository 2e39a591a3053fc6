"""What the doctor reads of the machine: commands, /proc and /sys, one socket probe.

Everything goes through one :class:`System` so the checks can be tested on canned
output (a subclass returns text instead of running anything). Nothing here changes
the machine: the commands are `ip ... show`, `nft list` and `nft --check` (the kernel
validates the batch and aborts it), the socket probe is never bound.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import attrs

from ..inbound.sockopt import IP_TRANSPARENT, IPV6_TRANSPARENT

COMMAND_TIMEOUT = 10.0  # seconds for one ip/nft command


@attrs.frozen
class Ran:
    returncode: int
    stdout: str
    stderr: str

    def first_error(self) -> str:
        lines = [line.strip() for line in self.stderr.splitlines() if line.strip()]
        return lines[0] if lines else f"exit status {self.returncode}"


class System:
    def run(self, argv: Sequence[str], *, input: str | None = None) -> Ran | None:
        """Run a command; None when it is not installed."""
        try:
            result = subprocess.run(list(argv), input=input, capture_output=True, text=True,
                                    timeout=COMMAND_TIMEOUT, check=False)  # fmt: skip
        except FileNotFoundError:
            return None
        except subprocess.TimeoutExpired:
            return Ran(124, "", f"{argv[0]} took more than {COMMAND_TIMEOUT:g}s")
        return Ran(result.returncode, result.stdout, result.stderr)

    def read(self, path: str) -> str | None:
        try:
            return Path(path).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def entries(self, directory: str) -> list[str]:
        try:
            return sorted(os.listdir(directory))
        except OSError:
            return []

    def socket_owners(self, inodes: set[int]) -> dict[int, int]:
        """inode -> pid of a process holding that socket (the first found)."""
        owners: dict[int, int] = {}
        links = {f"socket:[{inode}]": inode for inode in inodes}
        for pid in (p for p in self.entries("/proc") if p.isdigit()):
            for fd in self.entries(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    inode = links.get(os.readlink(f"/proc/{pid}/fd/{fd}"))
                    if inode is not None:
                        owners.setdefault(inode, int(pid))
            if len(owners) == len(inodes):
                break
        return owners

    def try_ip_transparent(self, family: int) -> int:
        """0 if the kernel takes IP_TRANSPARENT on a fresh socket, else the errno."""
        try:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        except OSError as exc:
            return exc.errno or -1
        return 0
