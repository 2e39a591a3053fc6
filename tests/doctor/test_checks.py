"""The doctor's checks on canned machine output (a fake System): what each state of the
machine reads as, and the fix each ✘ names."""

from __future__ import annotations

import errno
from collections.abc import Sequence

import attrs

from trio_tproxy.config.load import parse_config_text
from trio_tproxy.doctor import diagnose, gateway, kernel
from trio_tproxy.doctor.report import Finding
from trio_tproxy.doctor.system import Ran, System
from trio_tproxy.firewall import plan_from_config

from .test_parse import IP_RULES, LIMITS, NFT_TABLE, PROC_TCP

CONFIG = """
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = 12345
[[outbounds]]
tag = "direct"
type = "direct"
mark = 255
[firewall]
lan_interfaces = ["eth1", "wlan*", "eth0.10"]
{firewall}
"""


@attrs.define
class FakeSystem(System):
    commands: dict[str, Ran | None] = attrs.Factory(dict)  # by the argv joined with spaces
    files: dict[str, str] = attrs.Factory(dict)
    transparent: dict[int, int] = attrs.Factory(dict)  # family -> errno
    owners: dict[int, int] = attrs.Factory(dict)
    ran: list[str] = attrs.Factory(list)

    def run(self, argv: Sequence[str], *, input: str | None = None) -> Ran | None:
        key = " ".join(argv)
        self.ran.append(key)
        return self.commands.get(key, Ran(0, "", ""))

    def read(self, path: str) -> str | None:
        return self.files.get(path)

    def entries(self, directory: str) -> list[str]:
        prefix = directory.rstrip("/") + "/"
        return sorted({p[len(prefix) :].split("/")[0] for p in self.files if p.startswith(prefix)})

    def socket_owners(self, inodes: set[int]) -> dict[int, int]:
        return {i: pid for i, pid in self.owners.items() if i in inodes}

    def try_ip_transparent(self, family: int) -> int:
        return self.transparent.get(family, 0)


def plan(firewall: str = ""):  # type: ignore[no-untyped-def]
    return plan_from_config(parse_config_text(CONFIG.format(firewall=firewall)),
                            resolve_bypass=False)  # fmt: skip


def lines(findings: list[Finding]) -> list[str]:
    return [f.line() for f in findings]


def test_kernel_support_by_trying() -> None:
    system = FakeSystem()
    assert lines(list(kernel.kernel(system))) == [
        "✔ kernel: nft accepts the socket and tproxy expressions (IPv4, IPv6)",
        "✔ kernel: IP_TRANSPARENT accepted (IPv4, IPv6)",
    ]
    assert system.ran == ["nft --check -f -"]  # a dry run: the kernel aborts the batch
    check = "nft --check -f -"
    refused = Ran(1, "", "/dev/stdin:20:3-60: Error: Could not process rule: No such file or "
                  "directory\n\t\tmeta l4proto tcp tproxy to :9 meta mark set 1 accept\n")  # fmt: skip
    found = lines(
        list(kernel.kernel(FakeSystem({check: refused}, transparent={10: errno.EAFNOSUPPORT})))
    )
    assert found[0] == (
        "✘ kernel: nft refuses the TPROXY ruleset: /dev/stdin:20:3-60: Error: Could not process "
        "rule: No such file or directory meta l4proto tcp tproxy to :9 meta mark set 1 accept "
        "— fix: modprobe -a nft_tproxy nft_socket nf_tproxy_ipv4 nf_tproxy_ipv6 (or a kernel "
        "with CONFIG_NFT_TPROXY and CONFIG_NFT_SOCKET)"
    )
    assert found[1].startswith(
        "✘ kernel: IP_TRANSPARENT refused (IPv6: Address family not supported"
    )
    unprivileged = FakeSystem({check: Ran(1, "", "Error: cache initialization failed: Operation "
                                                "not permitted")}, transparent={2: 1, 10: 1})  # fmt: skip
    assert [f.status for f in kernel.kernel(unprivileged)] == ["warn", "warn"]
    ipv4_only = FakeSystem(transparent={10: errno.EAFNOSUPPORT})
    assert lines(list(kernel.kernel(ipv4_only, ipv6=False))) == [
        "✔ kernel: nft accepts the socket and tproxy expressions (IPv4)",
        "✔ kernel: IP_TRANSPARENT accepted (IPv4)",
    ]
    assert lines(list(kernel.kernel(FakeSystem({check: None}))))[0] == (
        "✘ kernel: nft is not installed — fix: apt-get install nftables"
    )


def test_policy_routing_per_family() -> None:
    system = FakeSystem({
        "ip -4 rule show": Ran(0, IP_RULES, ""),
        "ip -4 route show table 100": Ran(0, "local default dev lo scope host\n", ""),
        "ip -6 rule show": Ran(0, "0:\tfrom all lookup local\n", ""),
        "ip -6 route show table 100": Ran(0, "", ""),
    })  # fmt: skip
    assert lines(list(kernel.policy_routing(system, plan()))) == [
        "✔ policy routing IPv4: ip rule fwmark 1 lookup 100 (priority 32765)",
        "✔ policy routing IPv4: local default dev lo in table 100",
        "✘ policy routing IPv6: no ip rule fwmark 1 lookup 100 — fix: ip -6 rule add fwmark 1 "
        "lookup 100",
        "✘ policy routing IPv6: no local default route via lo in table 100 — fix: ip -6 route "
        "replace local ::/0 dev lo table 100",
    ]
    # IPv4 only: IPv6 is not looked at
    v4 = list(kernel.policy_routing(system, plan("ipv6 = false")))
    assert [f.subject for f in v4] == ["policy routing IPv4"] * 2


def test_nft_table_compared_with_the_plan() -> None:
    listing = "nft -t list table inet trio_tproxy"
    system = FakeSystem({listing: Ran(0, NFT_TABLE, "")})
    assert lines(list(kernel.nft_table(system, plan(), "/etc/tp.toml"))) == [
        "✔ nft table inet trio_tproxy: diverts tcp to port 12345",
        "✘ nft table inet trio_tproxy: diverts udp to port 5353, but the inbound listens on "
        "12345 — fix: trio-tproxy firewall apply /etc/tp.toml",
    ]
    missing = FakeSystem({listing: Ran(1, "", "Error: No such file or directory")})
    assert lines(list(kernel.nft_table(missing, plan(), "my conf.toml"))) == [
        "✘ nft table inet trio_tproxy: missing — fix: trio-tproxy firewall apply 'my conf.toml'"
    ]
    denied = FakeSystem({listing: Ran(1, "", "Error: Operation not permitted")})
    assert [f.status for f in kernel.nft_table(denied, plan(), "c")] == ["warn"]


def test_forwarding_only_in_gateway_mode() -> None:
    system = FakeSystem(files={"/proc/sys/net/ipv4/ip_forward": "1\n",
                               "/proc/sys/net/ipv6/conf/all/forwarding": "0\n"})  # fmt: skip
    assert lines(list(kernel.forwarding(system, plan()))) == [
        "✔ forwarding: net.ipv4.ip_forward = 1",
        "✘ forwarding: net.ipv6.conf.all.forwarding = 0: LAN traffic that is not diverted "
        "(bypass) is not routed — fix: sysctl -w net.ipv6.conf.all.forwarding=1",
    ]
    assert list(kernel.forwarding(system, plan('mode = "local"'))) == []


def test_rp_filter_is_advice_per_lan_interface() -> None:
    conf = "/proc/sys/net/ipv4/conf"
    system = FakeSystem(files={
        f"{conf}/all/rp_filter": "0\n", f"{conf}/eth1/rp_filter": "1\n",
        f"{conf}/wlan0/rp_filter": "2\n", f"{conf}/wlan1/rp_filter": "0\n",
        f"{conf}/lo/rp_filter": "1\n",
    })  # fmt: skip
    found = list(kernel.rp_filter(system, plan()))
    assert lines(found) == [
        "⚠ rp_filter eth1: strict (1); TPROXY worked with it in our tests, but if diverted "
        "traffic is dropped, make it loose — fix: sysctl -w net.ipv4.conf.eth1.rp_filter=2",
        "✔ rp_filter wlan0: loose (2)",
        "✔ rp_filter wlan1: off (0)",
        "⚠ LAN interface eth0.10: not present now (firewall.lan_interfaces) — fix: create it, "
        "or name the LAN interfaces in firewall.lan_interfaces (ip link show lists them)",
    ]
    assert all(f.status != "fail" for f in found)
    system.files[f"{conf}/all/rp_filter"] = "1\n"
    system.files[f"{conf}/eth0.10/rp_filter"] = "1\n"
    vlan = [f for f in kernel.rp_filter(system, plan()) if "eth0.10" in f.subject]
    # the effective value is the larger of all and the interface's; sysctl spells '.' '/'
    assert (
        vlan[0].fix == "sysctl -w net.ipv4.conf.all.rp_filter=2 net.ipv4.conf.eth0/10.rp_filter=2"
    )
    assert vlan[0].status == "warn"


def test_listeners_and_the_process_behind_them() -> None:
    cfg = parse_config_text(CONFIG.format(firewall="") + '[dns]\nlisten = ["127.0.0.1:53"]\n'
                            "[policy]\nmax_connections = 4096\n")  # fmt: skip
    status = ("Name:\ttrio-tproxy\nUid:\t998\t998\t998\t998\n"
              f"CapEff:\t{(1 << 12) | (1 << 10):016x}\n")  # fmt: skip
    system = FakeSystem(files={"/proc/net/tcp": PROC_TCP, "/proc/net/udp": PROC_TCP.replace(" 0A ", " 07 "),
                               "/proc/77/status": status, "/proc/77/limits": LIMITS},
                        owners={313: 77})  # fmt: skip
    found, pid = gateway.listeners(system, cfg, "/etc/tp.toml")
    assert pid == 77
    start = "systemctl start trio-tproxy (or: trio-tproxy run /etc/tp.toml)"
    assert lines(found) == [
        "✔ inbound 'tproxy-in': listening on tcp port 12345 (pid 77 trio-tproxy, uid 998)",
        "✔ inbound 'tproxy-in': listening on udp port 12345 (pid 77 trio-tproxy, uid 998)",
        f"✘ dns.listen: nothing listens on udp port 53: is the gateway running? — fix: {start}",
        f"✘ dns.listen: nothing listens on tcp port 53: is the gateway running? — fix: {start}",
    ]
    unit = "in its unit (trio-tproxy service print), then systemctl restart trio-tproxy"
    assert lines(list(gateway.process(system, cfg, 77))) == [
        "✘ gateway process 77: CAP_NET_RAW is missing: needed for raw reply packets (UDP) of "
        "inbound 'tproxy-in' (port 12345) — fix: AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW "
        f"CAP_NET_BIND_SERVICE {unit}",
        "✘ gateway process 77: open-file limit 1024, but policy.max_connections = 4096 needs "
        f"8256 — fix: LimitNOFILE=11328 {unit}",
    ]


def test_a_config_without_a_ruleset_still_gets_every_other_check() -> None:
    cfg = parse_config_text(
        CONFIG.format(firewall="").replace("port = 12345", 'port = 12345\nlisten = "0.0.0.0"')
    )
    found = lines(diagnose(cfg, "c.toml", FakeSystem()))
    assert found[2] == (
        "✘ firewall: no ruleset for this config: listens on IPv4 only (0.0.0.0), so diverted IPv6 "
        'traffic would find no listener: listen on "::" or set firewall.ipv6 = false @ '
        "$.inbounds[0].listen — fix: edit c.toml (trio-tproxy firewall print reports it too)"
    )
    assert [line.split(":")[0] for line in found] == [
        "✔ kernel",
        "✔ kernel",
        "✘ firewall",
        "✘ inbound 'tproxy-in'",
        "✘ inbound 'tproxy-in'",
    ]  # no DNS servers configured: none asked
