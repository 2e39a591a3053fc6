"""The systemd unit for this installation (``trio-tproxy service print``).

The unit runs the gateway as its own unprivileged user with exactly the capabilities a
transparent proxy needs, no more:

- ``CAP_NET_ADMIN``: IP_TRANSPARENT on the TPROXY listeners and reply sockets, SO_MARK
  on upstream sockets, nftables and policy routes for ``firewall.auto``;
- ``CAP_NET_RAW``: IP_TRANSPARENT as well (the kernel accepts either), raw reply paths;
- ``CAP_NET_BIND_SERVICE``: inbound or DNS ports below 1024.

``Type=notify``: systemd considers the service started when ``run`` sends READY=1,
which it does only once every listener is bound (notify.py). The hardening chosen
leaves netlink, raw and inet sockets alone, since TPROXY needs all three: no
``PrivateNetwork``, no ``RestrictAddressFamilies`` without AF_NETLINK.

Pure: the text is built from the config path, the executable and the config's limits.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .limits import FD_RESERVE, FDS_PER_FLOW, FDS_PER_PIPE, MAX_PIPES

CAPABILITIES = "CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE"
USER = "trio-tproxy"
MIN_NOFILE = 8192
UDP_HEADROOM = 1024  # UDP reply sockets and upstream links beside the TCP flows


def nofile_limit(max_connections: int) -> int:
    """``LimitNOFILE=`` that lets ``policy.max_connections`` flows be open at once, with
    every splice pipe of the pool (limits.py counts the same way when ``run`` starts)."""
    need = (max_connections * FDS_PER_FLOW + FD_RESERVE + MAX_PIPES * FDS_PER_PIPE
            + UDP_HEADROOM)  # fmt: skip
    return max(MIN_NOFILE, need)


def console_script() -> str:
    """The absolute path of the ``trio-tproxy`` command of this installation.

    The one next to this interpreter (a venv's bin/ or /usr/bin) comes first, then the
    one on $PATH; without either, the interpreter itself runs the package."""
    beside = Path(sys.executable).parent / "trio-tproxy"
    if beside.is_file():
        return str(beside.absolute())
    found = shutil.which("trio-tproxy")
    if found:
        return str(Path(found).absolute())
    return f"{Path(sys.executable).absolute()} -m trio_tproxy"


def _quote(path: str) -> str:
    """A path as one systemd command-line word."""
    if any(c in path for c in ' "\\\'$%;'):
        escaped = path.replace("\\", "\\\\").replace('"', '\\"')
        escaped = escaped.replace("$", "$$").replace("%", "%%")
        return f'"{escaped}"'
    return path


def unit(config: Path, *, executable: str, max_connections: int, grace: float) -> str:
    """The unit file text. ``config`` must be absolute."""
    home = config.is_relative_to("/home") or config.is_relative_to("/root")
    stop_timeout = int(grace) + 15  # drain, then a margin for the last resets and exit
    return f"""\
# trio-tproxy: transparent proxy gateway. Written by `trio-tproxy service print`.
# Install: see README "Running as a service".
[Unit]
Description=trio-tproxy transparent proxy gateway
Documentation=https://github.com/trio-tproxy/trio-tproxy
After=network-online.target nftables.service
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={executable} run {_quote(str(config))}
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=2s
TimeoutStopSec={stop_timeout}s
User={USER}
Group={USER}
AmbientCapabilities={CAPABILITIES}
CapabilityBoundingSet={CAPABILITIES}
LimitNOFILE={nofile_limit(max_connections)}
StateDirectory=trio-tproxy
CacheDirectory=trio-tproxy
Environment=XDG_CACHE_HOME=/var/cache
# Hardening that leaves TPROXY working (inet, raw and netlink sockets are all needed).
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={"read-only" if home else "yes"}
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK AF_PACKET

[Install]
WantedBy=multi-user.target
"""
