"""caps.py: the effective set parsed from /proc, what a config needs, the one-line refusal."""

from __future__ import annotations

import errno
from pathlib import Path

from trio_tproxy import caps
from trio_tproxy.config.load import parse_config_text

ROOT_STATUS = "Name:\tpython\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n"
# setpriv --ambient-caps +net_admin,+net_raw,+net_bind_service as an unprivileged user
THREE = (1 << 10) | (1 << 12) | (1 << 13)

CONFIG = """
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = 12345
mark = 2
[[inbounds]]
tag = "web"
type = "redirect"
port = 80
[[outbounds]]
tag = "direct"
type = "direct"
mark = 255
[[outbounds]]
tag = "block"
type = "block"
[dns]
listen = ["127.0.0.1:53", "127.0.0.1:5353"]
[firewall]
auto = true
"""


def test_parse_mask() -> None:
    assert caps.parse_mask(ROOT_STATUS) == 0x1FFFFFFFFFF
    assert caps.parse_mask(ROOT_STATUS, "CapInh") == 0
    assert caps.parse_mask(f"CapEff:\t{THREE:016x}\n") == THREE
    assert caps.parse_mask("Name: x\n") is None
    assert caps.parse_mask("CapEff:\tzz\n") is None


def test_effective_reads_a_status_file(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text(f"CapEff:\t{1 << caps.CAP_NET_RAW:016x}\n")
    assert caps.effective(status) == 1 << caps.CAP_NET_RAW
    assert caps.has(caps.CAP_NET_RAW, status)
    assert not caps.has(caps.CAP_NET_ADMIN, status)
    assert caps.effective(tmp_path / "missing") is None
    assert caps.names(THREE) == ["CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"]


def test_needs_names_each_use() -> None:
    needs = caps.needs(parse_config_text(CONFIG))
    by_cap = {
        cap: [n.purpose for n in needs if n.capability == cap] for cap in caps.NAMES
    }  # fmt: skip
    assert by_cap[caps.CAP_NET_ADMIN] == [
        "IP_TRANSPARENT on inbound 'tproxy-in' (port 12345)",
        "SO_MARK=2 on the replies of inbound 'tproxy-in' (port 12345)",
        "SO_MARK=255 on outbound 'direct'",
        "nft and ip rule for firewall.auto",
    ]
    assert by_cap[caps.CAP_NET_RAW] == [
        "raw reply packets (UDP) of inbound 'tproxy-in' (port 12345)"
    ]
    assert by_cap[caps.CAP_NET_BIND_SERVICE] == [
        "port 80 of inbound 'web' (port 80)",
        "port 53 of dns.listen",
    ]
    # a lowered ip_unprivileged_port_start needs no capability for port 80
    assert not [n for n in caps.needs(parse_config_text(CONFIG), port_start=53)
                if n.capability == caps.CAP_NET_BIND_SERVICE]  # fmt: skip


def test_the_three_capabilities_are_enough_and_each_is_needed() -> None:
    needs = caps.needs(parse_config_text(CONFIG))
    assert caps.unmet(needs, THREE) == []
    assert caps.unmet(needs, 0x1FFFFFFFFFF) == []
    for cap in caps.GATEWAY_CAPABILITIES:
        missing = caps.unmet(needs, THREE & ~(1 << cap))
        assert missing and {n.capability for n in missing} == {cap}


def test_ip_transparent_takes_either_capability() -> None:
    needs = caps.needs(parse_config_text(CONFIG))
    without_admin = caps.unmet(needs, THREE & ~(1 << caps.CAP_NET_ADMIN))
    assert not any("IP_TRANSPARENT" in n.purpose for n in without_admin)
    nothing = caps.unmet(needs, 0)
    assert any("IP_TRANSPARENT" in n.purpose for n in nothing)


def test_one_line_per_missing_capability() -> None:
    missing = caps.unmet(caps.needs(parse_config_text(CONFIG)), 1 << caps.CAP_NET_BIND_SERVICE)
    lines = list(caps.missing_lines(missing))
    assert len(lines) == 2
    assert lines[0].startswith(
        "CAP_NET_ADMIN is missing: needed for IP_TRANSPARENT on inbound 'tproxy-in' (port 12345), "
        "SO_MARK=2 on the replies"
    )
    assert lines[1].startswith("CAP_NET_RAW is missing: needed for raw reply packets (UDP)")
    assert all("\n" not in line and "run as root, or grant it" in line for line in lines)


def test_bind_refusal_only_for_privileged_ports() -> None:
    refusal = caps.bind_refusal(errno.EACCES, 80, 1024)
    assert refusal is not None
    assert refusal.startswith("CAP_NET_BIND_SERVICE is missing: needed for port 80;")
    assert caps.bind_refusal(errno.EACCES, 40000, 1024) is None
    assert caps.bind_refusal(errno.EADDRINUSE, 80, 1024) is None
