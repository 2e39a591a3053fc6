"""Ruleset generation, pure: exact text, validation, and no I/O imports."""

from __future__ import annotations

import ipaddress
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_tproxy.firewall import (
    RESERVED_V4,
    RESERVED_V6,
    DiversionPlan,
    render_ip_rules,
    render_ip_rules_removal,
    render_nft,
    render_nft_removal,
)

GATEWAY_PLAN = DiversionPlan(
    tproxy_port=12345,
    bypass_v4=("10.0.0.0/8", "192.168.0.0/16"),
    bypass_v6=("fc00::/7",),
    lan_interfaces=("br-lan", "wlan0"),
)

GATEWAY_NFT = """\
table inet trio_tproxy {}
delete table inet trio_tproxy
table inet trio_tproxy {
	set bypass4 {
		type ipv4_addr
		flags interval
		auto-merge
		elements = {
			10.0.0.0/8,
			192.168.0.0/16,
		}
	}

	set bypass6 {
		type ipv6_addr
		flags interval
		auto-merge
		elements = {
			fc00::/7,
		}
	}

	chain prerouting {
		type filter hook prerouting priority mangle; policy accept;
		meta mark 255 return
		fib daddr type { local, broadcast, multicast } return
		ip daddr @bypass4 return
		ip6 daddr @bypass6 return
		meta l4proto { tcp, udp } socket transparent 1 meta mark set 1 accept
		iifname { "br-lan", "wlan0" } jump divert
	}

	chain divert {
		meta l4proto tcp tproxy to :12345 meta mark set 1 accept
		meta l4proto udp tproxy to :12345 meta mark set 1 accept
	}
}
"""


def test_gateway_plan_renders_exactly() -> None:
    assert render_nft(GATEWAY_PLAN) == GATEWAY_NFT


def test_reserved_ranges_are_v2ray_geoip_private() -> None:
    expected_v4 = [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "255.255.255.255/32",
    ]
    assert list(RESERVED_V4) == expected_v4
    assert list(RESERVED_V6) == ["::1/128", "fc00::/7", "fe80::/10", "ff00::/8"]
    for cidr in RESERVED_V4 + RESERVED_V6:
        assert str(ipaddress.ip_network(cidr)) == cidr  # canonical, no host bits


def test_any_interface_when_no_lan_interfaces() -> None:
    text = render_nft(DiversionPlan(tproxy_port=1, bypass_v4=(), bypass_v6=()))
    assert "\t\tjump divert\n" in text
    assert "iifname" not in text
    assert "elements" not in text  # empty sets are declared, not filled


def test_redirect_only_plan_has_nat_chain_and_no_tproxy() -> None:
    plan = DiversionPlan(
        tproxy_port=None, redirect_port=8080, bypass_v4=(), bypass_v6=(), lan_interfaces=("lan",)
    )
    text = render_nft(plan)
    assert "tproxy to" not in text
    assert "chain prerouting" not in text
    assert "type nat hook prerouting priority dstnat; policy accept;" in text
    assert '\t\tiifname "lan" meta l4proto tcp redirect to :8080\n' in text
    assert render_ip_rules(plan) == []
    assert render_ip_rules_removal(plan) == []


def test_udp_tproxy_beside_tcp_redirect() -> None:
    plan = DiversionPlan(
        tproxy_port=5353, tproxy_tcp=False, redirect_port=8080, bypass_v4=(), bypass_v6=()
    )
    text = render_nft(plan)
    assert "meta l4proto { udp } socket transparent 1" in text
    assert "meta l4proto udp tproxy to :5353" in text
    assert "meta l4proto tcp tproxy" not in text
    assert "redirect to :8080" in text


def test_custom_names_marks_and_priorities() -> None:
    plan = DiversionPlan(
        tproxy_port=7,
        bypass_v4=(),
        bypass_v6=(),
        table="tp2",
        fwmark=0x10,
        proxy_marks=(0x30, 0x20, 0x30),
        priority_mangle=-140,
        redirect_port=8,
        tproxy_tcp=False,
        priority_nat=-90,
    )
    text = render_nft(plan)
    assert text.startswith("table inet tp2 {}\ndelete table inet tp2\ntable inet tp2 {\n")
    assert "priority -140;" in text
    assert "priority -90;" in text
    assert "meta mark { 32, 48 } return" in text  # sorted, unique
    assert "meta mark set 16 accept" in text


def test_removal_script_is_the_replace_preamble() -> None:
    assert render_nft_removal(GATEWAY_PLAN) == (
        "table inet trio_tproxy {}\ndelete table inet trio_tproxy\n"
    )


def test_ip_rules_cover_both_families() -> None:
    plan = DiversionPlan(tproxy_port=1, bypass_v4=(), bypass_v6=(), fwmark=7, route_table=70)
    assert render_ip_rules(plan) == [
        ["ip", "-4", "rule", "add", "fwmark", "7", "lookup", "70"],
        ["ip", "-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", "70"],
        ["ip", "-6", "rule", "add", "fwmark", "7", "lookup", "70"],
        ["ip", "-6", "route", "replace", "local", "::/0", "dev", "lo", "table", "70"],
    ]
    assert render_ip_rules_removal(plan) == [
        ["ip", "-4", "rule", "del", "fwmark", "7", "lookup", "70"],
        ["ip", "-4", "route", "del", "local", "0.0.0.0/0", "dev", "lo", "table", "70"],
        ["ip", "-6", "rule", "del", "fwmark", "7", "lookup", "70"],
        ["ip", "-6", "route", "del", "local", "::/0", "dev", "lo", "table", "70"],
    ]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tproxy_port": 0}, "tproxy_port must be in 1..65535"),
        ({"redirect_port": 70000, "tproxy_tcp": False}, "redirect_port must be in"),
        ({"bypass_v4": ("fc00::/7",)}, "not an IPv4 network"),
        ({"bypass_v6": ("10.0.0.0/8",)}, "not an IPv6 network"),
        ({"bypass_v4": ("10.0.0.1/8",)}, "has host bits set"),
        ({"bypass_v4": ("banana",)}, "bypass_v4"),
        ({"lan_interfaces": ('eth0" accept',)}, "not a valid interface name"),
        ({"lan_interfaces": ("a-very-long-ifname",)}, "not a valid interface name"),
        ({"table": "1table"}, "nft identifier"),
        ({"fwmark": 0}, "fwmark must be in"),
        ({"proxy_marks": (2, 1)}, "must differ"),
        ({"proxy_marks": 0}, "proxy_marks: 0 is not in"),
        ({"local": True, "proxy_marks": ()}, "local mode needs proxy_marks or skip_users"),
        ({"skip_users": ('root"',)}, "not a user name or uid"),
        ({"tcp_address": "localhost"}, "tcp_address"),
        ({"udp_port": 65536}, "udp_port must be in"),
        ({"lan_interfaces": ("e*th",)}, "not a valid interface name"),
        ({"route_table": 254}, "free table id"),
        ({"redirect_port": 8080}, "both TPROXY'd and REDIRECTed"),
    ],
)
def test_invalid_plans_are_refused(overrides: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"tproxy_port": 1, "bypass_v4": (), "bypass_v6": ()}
    fields.update(overrides)
    with pytest.raises(ValueError, match=message):
        DiversionPlan(**fields)  # type: ignore[arg-type]


def test_a_bare_string_is_not_a_list_of_interfaces() -> None:
    with pytest.raises(TypeError, match="the string 'eth0'"):
        DiversionPlan(tproxy_port=1, bypass_v4=(), bypass_v6=(), lan_interfaces="eth0")


def test_generation_imports_no_io() -> None:
    code = (
        "import sys, trio_tproxy.firewall\n"
        "io = {'trio', 'socket', 'subprocess', 'selectors', 'asyncio'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in io))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


LOCAL_PLAN = DiversionPlan(
    tproxy_port=7892,
    udp_port=7893,
    tcp_address="127.0.0.1",
    bypass_v4=("192.168.0.0/16",),
    bypass_v6=(),
    lan_interfaces=("br-lan", "wg*"),
    local=True,
    skip_users=("proxy", "1000"),
    fail_closed=True,
    ipv6=False,
    proxy_marks=(255, 2),
    priority_mangle=-140,
    table="tp",
)

LOCAL_CHAINS = """\
	chain prerouting {
		type filter hook prerouting priority -140; policy accept;
		meta mark { 2, 255 } return
		fib daddr type { local, broadcast, multicast } return
		ip daddr @bypass4 return
		ip6 daddr @bypass6 return
		meta l4proto { tcp, udp } socket transparent 1 meta mark set 1 accept
		iifname "lo" meta mark 1 meta nfproto ipv4 jump divert
		iifname { "br-lan", "wg*" } meta nfproto ipv4 jump divert
	}

	chain divert {
		meta l4proto tcp tproxy ip to 127.0.0.1:7892 meta mark set 1 accept
		meta l4proto udp tproxy to :7893 meta mark set 1 accept
		meta l4proto { tcp, udp } drop
	}

	chain output {
		type route hook output priority -140; policy accept;
		meta mark { 2, 255 } return
		meta skuid { "proxy", 1000 } return
		fib daddr type { local, broadcast, multicast } return
		ip daddr @bypass4 return
		ip6 daddr @bypass6 return
		ct direction reply return
		meta l4proto { tcp, udp } meta nfproto ipv4 meta mark set 1
	}
}
"""


def test_local_fail_closed_ipv4_only_plan_renders_exactly() -> None:
    text = render_nft(LOCAL_PLAN)
    assert text.endswith(LOCAL_CHAINS)
    # IPv6 off: no IPv6 policy routing either.
    assert render_ip_rules(LOCAL_PLAN) == [
        ["ip", "-4", "rule", "add", "fwmark", "1", "lookup", "100"],
        ["ip", "-4", "route", "replace", "local", "0.0.0.0/0", "dev", "lo", "table", "100"],
    ]


def test_local_mode_without_lan_interfaces_needs_no_lo_rule() -> None:
    plan = DiversionPlan(tproxy_port=1, bypass_v4=(), bypass_v6=(), local=True)
    text = render_nft(plan)
    assert '"lo"' not in text
    assert "\t\tjump divert\n" in text  # every interface, lo included
    assert "\t\tmeta l4proto { tcp, udp } meta mark set 1\n" in text


def test_gateway_mode_has_no_output_chain_and_fails_open_by_default() -> None:
    text = render_nft(GATEWAY_PLAN)
    assert "hook output" not in text
    assert "drop" not in text
    assert "skuid" not in text


def test_ipv6_listener_address_uses_ip6_tproxy() -> None:
    plan = DiversionPlan(tproxy_port=5, tcp_address="::1", tproxy_udp=False, bypass_v4=(),
                         bypass_v6=())  # fmt: skip
    assert "meta l4proto tcp tproxy ip6 to [::1]:5 meta mark set 1 accept" in render_nft(plan)


def test_redirect_in_local_mode_adds_a_nat_output_chain() -> None:
    plan = DiversionPlan(tproxy_port=None, redirect_port=7891, bypass_v4=(), bypass_v6=(),
                         local=True, skip_users=("nobody",), ipv6=False)  # fmt: skip
    text = render_nft(plan)
    nat_output = text[text.index("\tchain nat_output") :]
    assert nat_output == (
        "\tchain nat_output {\n"
        "\t\ttype nat hook output priority -100; policy accept;\n"
        "\t\tmeta mark 255 return\n"
        '\t\tmeta skuid "nobody" return\n'
        "\t\tfib daddr type { local, broadcast, multicast } return\n"
        "\t\tip daddr @bypass4 return\n"
        "\t\tip6 daddr @bypass6 return\n"
        "\t\tmeta nfproto ipv4 meta l4proto tcp redirect to :7891\n"
        "\t}\n"
        "}\n"
    )
    assert render_ip_rules(plan) == []


def test_no_proxy_marks_means_no_mark_rule() -> None:
    plan = DiversionPlan(tproxy_port=1, bypass_v4=(), bypass_v6=(), proxy_marks=())
    assert "meta mark return" not in render_nft(plan)
    assert "meta mark" not in render_nft(plan).split("socket")[0]


# What would let a name break out of its place in an nft script or a shell command.
UNSAFE = set("\"'\\ {};#$`\n\t\r")


@given(name=st.one_of(st.text(max_size=20), st.from_regex(r"[\w.:@+*-]{1,17}", fullmatch=True)))
def test_interface_names_are_refused_or_harmless(name: str) -> None:
    try:
        plan = DiversionPlan(tproxy_port=1, bypass_v4=(), bypass_v6=(), lan_interfaces=(name,))
    except ValueError:
        return
    assert not UNSAFE & set(name)
    assert f'iifname "{name}" jump divert' in render_nft(plan)


@given(user=st.one_of(st.text(max_size=40), st.from_regex(r"[\w.$-]{1,34}", fullmatch=True)))
def test_user_names_are_refused_or_harmless(user: str) -> None:
    try:
        plan = DiversionPlan(tproxy_port=1, bypass_v4=(), bypass_v6=(), local=True,
                             skip_users=(user,))  # fmt: skip
    except ValueError:
        return
    assert not UNSAFE & set(user)
    assert "meta skuid" in render_nft(plan)


@given(table=st.one_of(st.text(max_size=70), st.from_regex(r"[\w-]{1,66}", fullmatch=True)))
def test_table_names_are_refused_or_harmless(table: str) -> None:
    try:
        plan = DiversionPlan(tproxy_port=1, bypass_v4=(), bypass_v6=(), table=table)
    except ValueError:
        return
    assert not UNSAFE & set(table)
    assert render_nft(plan).startswith(f"table inet {table} {{}}\ndelete table inet {table}\n")


@pytest.mark.parametrize(("mangle", "nat", "expected"), [
    (100, -100, ["type filter hook prerouting priority 100;",  # srcnat: postrouting only
                 "type nat hook prerouting priority dstnat;"]),
    (-100, 100, ["type filter hook prerouting priority dstnat;",
                 "type nat hook prerouting priority 100;"]),
    (50, 0, ["type filter hook prerouting priority security;",
             "type nat hook prerouting priority filter;"]),
])  # fmt: skip
def test_priority_names_only_where_their_hook_takes_them(
    mangle: int, nat: int, expected: list[str]
) -> None:
    """nft refuses "srcnat" outside postrouting and "dstnat" outside prerouting
    ("invalid priority expression value in this context"): found by the kernel test's
    hypothesis run with priority_mangle = 100."""
    plan = DiversionPlan(tproxy_port=1, bypass_v4=(), bypass_v6=(), redirect_port=2,
                         tproxy_tcp=False, priority_mangle=mangle, priority_nat=nat,
                         local=True)  # fmt: skip
    text = render_nft(plan)
    for line in expected:
        assert line in text, text
    assert "hook output priority srcnat" not in text and "hook output priority dstnat" not in text
