"""The iptables/ip6tables rendering: exact commands (pure), and accepted by the kernel."""

from __future__ import annotations

import shutil

import pytest

from netlab import Netns
from trio_tproxy.firewall import (
    RESERVED_V4,
    RESERVED_V6,
    DiversionPlan,
    render_iptables,
    render_iptables_removal,
)

LOCAL = DiversionPlan(
    tproxy_port=12345,
    bypass_v4=("10.0.0.0/8",),
    bypass_v6=("fc00::/7",),
    lan_interfaces=("br-lan", "wlan*"),
    local=True,
    skip_users=("nobody",),
    fail_closed=True,
    proxy_marks=(2, 255),
)

MANGLE_V4 = """\
-N trio_tproxy
-N trio_tproxy_divert
-N trio_tproxy_mark
-A trio_tproxy -m mark --mark 2 -j RETURN
-A trio_tproxy -m mark --mark 255 -j RETURN
-A trio_tproxy -m addrtype --dst-type LOCAL -j RETURN
-A trio_tproxy -m addrtype --dst-type BROADCAST -j RETURN
-A trio_tproxy -m addrtype --dst-type MULTICAST -j RETURN
-A trio_tproxy -d 10.0.0.0/8 -j RETURN
-A trio_tproxy -p tcp -m socket --transparent -j trio_tproxy_mark
-A trio_tproxy -p udp -m socket --transparent -j trio_tproxy_mark
-A trio_tproxy -i lo -m mark --mark 1 -j trio_tproxy_divert
-A trio_tproxy -i br-lan -j trio_tproxy_divert
-A trio_tproxy -i wlan+ -j trio_tproxy_divert
-A trio_tproxy_mark -j MARK --set-mark 1
-A trio_tproxy_mark -j ACCEPT
-A trio_tproxy_divert -p tcp -j TPROXY --on-port 12345 --tproxy-mark 1
-A trio_tproxy_divert -p tcp -j DROP
-A trio_tproxy_divert -p udp -j TPROXY --on-port 12345 --tproxy-mark 1
-A trio_tproxy_divert -p udp -j DROP
-A PREROUTING -j trio_tproxy
-N trio_tproxy_out
-A trio_tproxy_out -m mark --mark 2 -j RETURN
-A trio_tproxy_out -m mark --mark 255 -j RETURN
-A trio_tproxy_out -m owner --uid-owner nobody -j RETURN
-A trio_tproxy_out -m addrtype --dst-type LOCAL -j RETURN
-A trio_tproxy_out -m addrtype --dst-type BROADCAST -j RETURN
-A trio_tproxy_out -m addrtype --dst-type MULTICAST -j RETURN
-A trio_tproxy_out -d 10.0.0.0/8 -j RETURN
-A trio_tproxy_out -m conntrack --ctdir REPLY -j RETURN
-A trio_tproxy_out -p tcp -j MARK --set-mark 1
-A trio_tproxy_out -p udp -j MARK --set-mark 1
-A OUTPUT -j trio_tproxy_out
"""


def _lines(commands: list[list[str]], command: str) -> list[str]:
    prefix = [command, "-w", "-t"]
    return [" ".join(argv[4:]) for argv in commands if argv[:3] == prefix]


def test_local_fail_closed_plan_renders_exactly() -> None:
    commands = render_iptables(LOCAL)
    assert all(argv[3] == "mangle" for argv in commands)
    assert _lines(commands, "iptables") == MANGLE_V4.splitlines()
    v6 = _lines(commands, "ip6tables")
    assert "-d fc00::/7 -j RETURN" in " | ".join(v6)
    assert not any("BROADCAST" in line for line in v6)  # IPv6 has no broadcast
    assert len(v6) == len(MANGLE_V4.splitlines()) - 2


def test_redirect_and_interface_wildcards() -> None:
    plan = DiversionPlan(tproxy_port=None, redirect_port=7891, bypass_v4=(), bypass_v6=(),
                         lan_interfaces=("eth*",), proxy_marks=(), ipv6=False)  # fmt: skip
    assert [" ".join(argv) for argv in render_iptables(plan)] == [
        "iptables -w -t nat -N trio_tproxy_nat",
        "iptables -w -t nat -A trio_tproxy_nat -m addrtype --dst-type LOCAL -j RETURN",
        "iptables -w -t nat -A trio_tproxy_nat -m addrtype --dst-type BROADCAST -j RETURN",
        "iptables -w -t nat -A trio_tproxy_nat -m addrtype --dst-type MULTICAST -j RETURN",
        "iptables -w -t nat -A trio_tproxy_nat -i eth+ -p tcp -j REDIRECT --to-ports 7891",
        "iptables -w -t nat -A PREROUTING -j trio_tproxy_nat",
    ]


def test_a_listener_address_limits_tproxy_to_its_family() -> None:
    plan = DiversionPlan(tproxy_port=5, tcp_address="127.0.0.1", tproxy_udp=False,
                         bypass_v4=(), bypass_v6=(), fail_closed=True)  # fmt: skip
    v4 = _lines(render_iptables(plan), "iptables")
    v6 = _lines(render_iptables(plan), "ip6tables")
    assert "-A trio_tproxy_divert -p tcp -j TPROXY --on-ip 127.0.0.1 --on-port 5 --tproxy-mark 1" in v4
    assert not any("TPROXY" in line for line in v6)
    assert "-A trio_tproxy_divert -p tcp -j DROP" in v6  # fail-closed: no listener for IPv6


def test_removal_unhooks_flushes_then_deletes_every_chain_of_both_families() -> None:
    removal = render_iptables_removal(DiversionPlan(tproxy_port=1, bypass_v4=(), bypass_v6=(),
                                                    ipv6=False))  # fmt: skip
    assert [argv[0] for argv in removal].count("ip6tables") == len(removal) // 2
    ops = [argv[4] for argv in removal if argv[0] == "iptables"]
    assert ops == ["-D"] * 4 + ["-F"] * 6 + ["-X"] * 6


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"table": "a_twenty_one_chars_xx"}, "too long for iptables chain names (at most 20"),
        ({"lan_interfaces": ("ppp+",)}, "iptables would read the '+' as a wildcard"),
    ],
)
def test_what_iptables_cannot_say_is_refused(overrides: dict[str, object], message: str) -> None:
    plan = DiversionPlan(tproxy_port=1, bypass_v4=(), bypass_v6=(), **overrides)  # type: ignore[arg-type]
    with pytest.raises(ValueError) as info:
        render_iptables(plan)
    assert message in str(info.value)


@pytest.mark.netns
@pytest.mark.parametrize("plan", [LOCAL, DiversionPlan(
    tproxy_port=12345, tproxy_tcp=False, redirect_port=12346, bypass_v4=RESERVED_V4,
    bypass_v6=RESERVED_V6, local=True, table="t20_chars_xxxxxxxxxx",
)], ids=["local-tproxy", "redirect-udp-local"])  # fmt: skip
def test_the_kernel_takes_the_commands_and_removal_restores_it(
    scratch_ns: Netns, plan: DiversionPlan
) -> None:
    if shutil.which("iptables") is None:
        pytest.skip("iptables is not installed (scripts/setup installs it)")
    save = "iptables-save -t mangle; iptables-save -t nat; ip6tables-save -t mangle; ip6tables-save -t nat"

    def state() -> list[str]:
        out = scratch_ns.run(["sh", "-c", save]).stdout
        # Rules and our chains: iptables-nft keeps the (empty) built-in tables it once
        # created, as iptables always has.
        return [line for line in out.splitlines() if line.startswith("-") or "t20" in line
                or "trio" in line]  # fmt: skip

    before = state()
    for argv in render_iptables(plan):
        scratch_ns.run(argv)
    installed = "\n".join(state())
    assert "-j TPROXY" in installed or "-j REDIRECT" in installed
    for argv in render_iptables_removal(plan):
        scratch_ns.run(argv, check=False)
    assert state() == before
