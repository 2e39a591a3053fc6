"""The running gateway: a listener on each configured port, and the process behind it.

Listeners are read from /proc/net/{tcp,udp}[6] of the network namespace the doctor
runs in (a TCP socket in LISTEN, a UDP socket bound and unconnected); the owning
process is found by the socket's inode among /proc/PID/fd, and its effective
capabilities and open-file limit are read from /proc/PID/status and limits.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterator

import attrs

from .. import caps
from ..config.schema import Config
from ..limits import FD_RESERVE, FDS_PER_FLOW
from ..service import nofile_limit
from . import parse
from .report import Finding, fail, ok, warn
from .system import System

_RESTART = "then systemctl restart trio-tproxy"


@attrs.frozen
class Port:
    subject: str  # "inbound 'tproxy-in'", "dns.listen"
    protocol: str
    port: int


def configured_ports(cfg: Config) -> list[Port]:
    ports = [Port(f"inbound {ib.tag!r}", proto, ib.port)
             for ib in cfg.inbounds for proto in ib.network]  # fmt: skip
    for where in cfg.dns.listen:
        ports += [Port("dns.listen", proto, where.port) for proto in ("udp", "tcp")]
    return ports


def listeners(system: System, cfg: Config, config: str) -> tuple[list[Finding], int | None]:
    """One finding per configured port, and the pid of the first listener's owner."""
    sockets = {
        proto: [sock for version, suffix in ((4, ""), (6, "6"))
                for sock in parse.proc_net_sockets(
                    system.read(f"/proc/net/{proto}{suffix}") or "", version)]
        for proto in ("tcp", "udp")
    }  # fmt: skip
    found = {
        port: parse.listening(iter(sockets[port.protocol]), port.port, tcp=port.protocol == "tcp")
        for port in configured_ports(cfg)
    }
    owners = system.socket_owners({s.inode for socks in found.values() for s in socks})
    start = f"systemctl start trio-tproxy (or: trio-tproxy run {shlex.quote(config)})"
    findings = []
    gateway_pid = None
    for port, socks in found.items():
        pids = sorted({owners[s.inode] for s in socks if s.inode in owners})
        if not socks:
            findings.append(fail(port.subject, f"nothing listens on {port.protocol} port "
                                 f"{port.port}: is the gateway running?", start))  # fmt: skip
            continue
        if gateway_pid is None and pids:
            gateway_pid = pids[0]
        who = f" (pid {pids[0]} {_name(system, pids[0])})" if pids else ""
        findings.append(ok(port.subject, f"listening on {port.protocol} port {port.port}{who}"))
    if gateway_pid is None and any(found.values()):
        findings.append(warn("gateway process", "cannot tell which process listens (another "
                             "user's /proc/PID/fd)", "run trio-tproxy doctor as root"))  # fmt: skip
    return findings, gateway_pid


def process(system: System, cfg: Config, pid: int) -> Iterator[Finding]:
    subject = f"gateway process {pid}"
    mask = caps.parse_mask(system.read(f"/proc/{pid}/status") or "")
    if mask is not None:
        port_start = caps.unprivileged_port_start()
        unmet = caps.unmet(caps.needs(cfg, port_start), mask)
        for cap, purposes in caps.by_capability(unmet).items():
            yield fail(subject, f"{caps.NAMES[cap]} is missing: needed for {', '.join(purposes)}",
                       f"AmbientCapabilities={_UNIT_CAPS} in its unit (trio-tproxy service "
                       f"print), {_RESTART}")  # fmt: skip
        if not unmet:
            held = ", ".join(caps.names(mask)) or "none needed"
            yield ok(subject, f"capabilities {held}: all the config needs")
    soft = parse.open_file_limit(system.read(f"/proc/{pid}/limits") or "")
    n = cfg.policy.max_connections
    need = n * FDS_PER_FLOW + FD_RESERVE
    if soft is None:
        return
    if soft != parse.UNLIMITED and soft < need:
        yield fail(subject, f"open-file limit {soft}, but policy.max_connections = {n} needs "
                   f"{need}", f"LimitNOFILE={nofile_limit(n)} in its unit (trio-tproxy service "
                   f"print), {_RESTART}")  # fmt: skip
    else:
        shown = "unlimited" if soft == parse.UNLIMITED else str(soft)
        yield ok(subject, f"open-file limit {shown} (policy.max_connections = {n} needs {need})")


_UNIT_CAPS = " ".join(caps.NAMES[cap] for cap in caps.GATEWAY_CAPABILITIES)


def _name(system: System, pid: int) -> str:
    status = system.read(f"/proc/{pid}/status") or ""
    uid = (parse.status_field(status, "Uid") or "?").split()[0]
    return f"{parse.status_field(status, 'Name') or '?'}, uid {uid}"
