"""Routing decides per flow, through the real gateway: by destination IP and by port."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .conftest import ECHO, HALFCLOSE, Gateway, proxy_config

pytestmark = pytest.mark.netns


def test_flows_go_to_different_outbounds_by_ip_and_port(
    make_gateway: Callable[..., Gateway],
) -> None:
    rules = """
[[routing.rules]]
ip = ["10.77.3.0/24", "fd77:3::/64"]
outbound = "block"
[[routing.rules]]
port = "9001,9100-9200"
network = "tcp"
outbound = "block"
[[routing.rules]]
ip = ["geoip:private"]
outbound = "direct"
"""
    gateway = make_gateway(proxy_config() + rules)
    lab = gateway.lab
    ok = {"ok": 1, "errors": []}
    assert gateway.client("many", lab.server.ip4, ECHO, count=1, size=1000) == ok
    assert gateway.client("many", lab.server.ip6, ECHO, count=1, size=1000) == ok
    for host, port in ((lab.server.extra_ip4[0], ECHO), (lab.server.extra_ip6[1], ECHO),
                       (lab.server.ip4, HALFCLOSE)):  # fmt: skip
        result = gateway.client("connect", host, port, timeout=5)
        assert result["result"] in ("eof", "reset"), (host, port, result)
    log = gateway.proxy.wait_for("trio_tproxy.access", count=5)
    access = [line.split("access: ", 1)[1] for line in log.splitlines() if "access: " in line]
    assert any(f"-> {lab.server.ip4}:{ECHO} tcp tproxy-in -> direct (rule #2)" in a for a in access)
    assert any(f"-> [{lab.server.ip6}]:{ECHO} tcp tproxy-in -> direct (rule #2)" in a for a in access)
    assert any(f"-> {lab.server.extra_ip4[0]}:{ECHO} tcp tproxy-in -> block (rule #0)" in a for a in access)
    assert any(f"-> [{lab.server.extra_ip6[1]}]:{ECHO} tcp tproxy-in -> block (rule #0)" in a for a in access)
    assert any(f"-> {lab.server.ip4}:{HALFCLOSE} tcp tproxy-in -> block (rule #1)" in a for a in access)
