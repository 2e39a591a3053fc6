"""Can this machine run the netlab?  One cached probe, a human reason when not."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

from netlab.namespace import scratch_namespace
from trio_tproxy.firewall.nft import render_nft
from trio_tproxy.firewall.plan import DiversionPlan

_TOOLS = ("ip", "nft", "sysctl", "ss")
# Exercises every kernel feature the rulesets use: nf_tables inet, fib, socket,
# tproxy (v4 and v6), nat redirect, interval sets.
_PROBE_PLANS = (
    DiversionPlan(tproxy_port=9, bypass_v4=("10.0.0.0/8",), bypass_v6=("fc00::/7",)),
    DiversionPlan(tproxy_port=None, redirect_port=9, bypass_v4=(), bypass_v6=(), table="probe_nat"),
)


@functools.cache
def requirements_met() -> str | None:
    """None when labs can be built here, else why not (for `pytest.skip`)."""
    if os.geteuid() != 0:
        return "netlab needs root"
    missing = [tool for tool in _TOOLS if shutil.which(tool) is None]
    if missing:
        return f"netlab needs {', '.join(missing)} on PATH"
    try:
        with scratch_namespace("tptrq") as netns:
            for plan in _PROBE_PLANS:
                netns.run(["nft", "-f", "-"], input=render_nft(plan))
    except (OSError, subprocess.SubprocessError) as exc:
        return f"network namespaces with nftables TPROXY unavailable: {exc}"
    return None
