"""What the gateway benchmarks share: the diversion port and mark, trio-tproxy's and
v2ray's equivalent configurations, and how to start v2ray and drive iperf3 over TCP."""

from __future__ import annotations

import json
import re
import subprocess
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
