"""doctor/parse.py and report.py: what ip, nft and /proc print, read byte-exact samples."""

from __future__ import annotations

import ipaddress

from trio_tproxy.doctor import parse
from trio_tproxy.doctor.report import exit_code, fail, ok, render, warn

IP_RULES = """0:\tfrom all lookup local
32764:\tfrom all fwmark 0x10/0xff lookup 100
32765:\tfrom all fwmark 0x1 lookup 100 proto static
32766:\tfrom all lookup main
32767:\tfrom all lookup default
"""
# the kernel's own formatting of the table `firewall apply` installs (nft 1.0.6)
NFT_TABLE = """table inet trio_tproxy {
\tset bypass4 {
\t\ttype ipv4_addr
\t\tflags interval
\t\tauto-merge
\t}
\tchain prerouting {
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tmeta l4proto { tcp, udp } socket transparent 1 meta mark set 0x00000001 accept
\t\tiifname "eth1" jump divert
\t}
\tchain divert {
\t\tmeta l4proto tcp tproxy to :12345 meta mark set 0x00000001 accept
\t\tmeta l4proto udp tproxy ip6 to [fd00::1]:5353 meta mark set 0x00000001 accept
\t\tmeta l4proto { tcp, udp } tproxy ip to 10.0.0.1:7000 accept
\t}
\tchain nat_prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tmeta l4proto tcp redirect to :12346
\t}
}
"""
PROC_TCP = (
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n"
    "   0: 00000000:3039 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0  "
    "      0 313 1 0000000040786a98 100 0 0 10 0\n"
    "   1: 0100007F:0035 0200007F:C350 01 00000000:00000000 00:00000000 00000000 65534  "
    "      0 4711 1 0000000040786a98 100 0 0 10 0\n"
    "   2: garbage\n"
)
PROC_UDP6 = (
    "  sl  local_address                         remote_address                        st "
    "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n"
    "  10: 00000000000000000000000000000000:3039 00000000000000000000000000000000:0000 07 "
    "00000000:00000000 00:00000000 00000000     0        0 99 2 0000000000000000 0\n"
    "  11: 0000000000000000FFFF00000100007F:0035 00000000000000000000000000000000:0000 07 "
    "00000000:00000000 00:00000000 00000000     0        0 98 2 0000000000000000 0\n"
)
LIMITS = """Limit                     Soft Limit           Hard Limit           Units
Max cpu time              unlimited            unlimited            seconds
Max open files            1024                 524288               files
"""


def test_ip_rules() -> None:
    rules = parse.ip_rules(IP_RULES)
    assert [r.priority for r in rules] == [0, 32764, 32765, 32766, 32767]
    assert rules[1] == parse.IpRule(32764, 0x10, 0xFF, "100")
    assert parse.find_rule(rules, 1, 100) == parse.IpRule(32765, 1, None, "100")
    assert parse.find_rule(rules, 0x10, 100) is None  # masked: not exactly ours
    assert parse.find_rule(rules, 1, 101) is None
    assert parse.ip_rules("") == [] and parse.ip_rules("junk\n: x\n") == []


def test_local_default_route() -> None:
    assert parse.has_local_default("local default dev lo scope host \n")
    assert parse.has_local_default("local default dev lo metric 1024 pref medium\n")
    assert parse.has_local_default("local ::/0 dev lo metric 1024\n")
    assert not parse.has_local_default("local default dev eth0 scope host\n")
    assert not parse.has_local_default("default via 10.0.0.1 dev eth0\n")
    assert not parse.has_local_default("local default dev\n")
    assert not parse.has_local_default("")


def test_diversions_and_redirects() -> None:
    assert parse.diversions(NFT_TABLE) == [
        parse.Diversion("tcp", 12345, None),
        parse.Diversion("udp", 5353, "fd00::1"),
        parse.Diversion("tcp", 7000, "10.0.0.1"),
        parse.Diversion("udp", 7000, "10.0.0.1"),
    ]
    assert parse.redirect_ports(NFT_TABLE) == [12346]
    assert parse.diversions("table inet x {\n}\n") == []


def test_proc_net_sockets() -> None:
    tcp = list(parse.proc_net_sockets(PROC_TCP, 4))
    assert tcp == [
        parse.ProcSocket(ipaddress.ip_address("0.0.0.0"), 12345, parse.TCP_LISTEN, 0, 313),
        parse.ProcSocket(ipaddress.ip_address("127.0.0.1"), 53, 0x01, 65534, 4711),
    ]
    assert parse.listening(iter(tcp), 12345, tcp=True) == tcp[:1]
    assert parse.listening(iter(tcp), 53, tcp=True) == []  # established, not listening
    udp = list(parse.proc_net_sockets(PROC_UDP6, 6))
    assert [s.address for s in udp] == [
        ipaddress.ip_address("::"),
        ipaddress.ip_address("::ffff:127.0.0.1"),
    ]
    assert [s.port for s in parse.listening(iter(udp), 12345, tcp=False)] == [12345]


def test_limits_and_status() -> None:
    assert parse.open_file_limit(LIMITS) == 1024
    assert parse.open_file_limit(LIMITS.replace("1024 ", "unlimited ")) == parse.UNLIMITED
    assert parse.open_file_limit("") is None
    status = "Name:\tpython3\nUid:\t65534\t65534\t65534\t65534\n"
    assert parse.status_field(status, "Name") == "python3"
    assert parse.status_field(status, "Uid") == "65534\t65534\t65534\t65534"
    assert parse.status_field(status, "Gid") is None


def test_report_lines_and_exit_code() -> None:
    findings = [
        ok("kernel", "fine"),
        warn("rp_filter eth1", "strict (1)", "sysctl -w net.ipv4.conf.eth1.rp_filter=2"),
        fail("policy routing IPv4", "no ip rule", "ip -4 rule add fwmark 1 lookup 100"),
    ]
    assert render(findings) == (
        "✔ kernel: fine\n"
        "⚠ rp_filter eth1: strict (1) — fix: sysctl -w net.ipv4.conf.eth1.rp_filter=2\n"
        "✘ policy routing IPv4: no ip rule — fix: ip -4 rule add fwmark 1 lookup 100\n"
    )
    assert exit_code(findings) == 1
    assert exit_code(findings[:2]) == 0
    assert exit_code([]) == 0
