"""The kernel side of diverting traffic: nft expressions, policy routing, the table,
forwarding and reverse-path filtering, compared with what `firewall` generates.

Kernel support is probed by trying, not read from module lists: TPROXY may be built
in and /proc/modules may not exist. `nft --check` sends the batch to the kernel, which
validates every expression (loading its module if it must) and then aborts it, so
nothing is created; IP_TRANSPARENT is tried on a socket that is never bound.

rp_filter is advice only (⚠): strict reverse-path filtering did not drop TPROXY'd
traffic in our namespace lab (the fwmark route lookup finds the local route for the
client's address, tests/e2e/test_doctor.py shows it), but kernels and setups differ.
"""

from __future__ import annotations

import errno
import fnmatch
import os
import shlex
import socket
from collections.abc import Iterator

from ..firewall.nft import local_route, render_nft, rule_selector
from ..firewall.plan import DiversionPlan
from . import parse
from .report import Finding, fail, ok, warn
from .system import System

PROBE_TABLE = "trio_tproxy_doctor_probe"
_ROOT = "run trio-tproxy doctor as root"
_NO_PERMISSION = "Operation not permitted"
_MODULES = ("modprobe -a nft_tproxy nft_socket nf_tproxy_ipv4 nf_tproxy_ipv6 (or a kernel "
            "with CONFIG_NFT_TPROXY and CONFIG_NFT_SOCKET)")  # fmt: skip
_CONF = "/proc/sys/net/ipv4/conf"


def kernel(system: System, *, ipv6: bool = True) -> Iterator[Finding]:
    """``ipv6``: whether IPv6 is diverted too (firewall.ipv6)."""
    subject = "kernel"
    probe = DiversionPlan(tproxy_port=9, bypass_v4=(), bypass_v6=(), table=PROBE_TABLE, ipv6=ipv6)
    families = [("IPv4", socket.AF_INET), ("IPv6", socket.AF_INET6)][: 2 if ipv6 else 1]
    shown = ", ".join(name for name, _ in families)
    ran = system.run(["nft", "--check", "-f", "-"], input=render_nft(probe))
    if ran is None:
        yield fail(subject, "nft is not installed", "apt-get install nftables")
    elif ran.returncode == 0:
        yield ok(subject, f"nft accepts the socket and tproxy expressions ({shown})")
    elif _NO_PERMISSION in ran.stderr:
        yield warn(subject, "cannot ask nft without CAP_NET_ADMIN", _ROOT)
    else:
        where = [line.strip() for line in ran.stderr.splitlines()[1:2]]
        yield fail(subject, f"nft refuses the TPROXY ruleset: {ran.first_error()} "
                   f"{' '.join(where)}".strip(), _MODULES)  # fmt: skip
    refused = {
        name: code for name, family in families if (code := system.try_ip_transparent(family))
    }
    if not refused:
        yield ok(subject, f"IP_TRANSPARENT accepted ({shown})")
    elif set(refused.values()) == {errno.EPERM}:
        yield warn(subject, "cannot try IP_TRANSPARENT without CAP_NET_ADMIN", _ROOT)
    else:
        text = ", ".join(f"{name}: {os.strerror(code)}" for name, code in refused.items())
        yield fail(subject, f"IP_TRANSPARENT refused ({text})",
                   "a kernel with IPv6 and TPROXY support, or firewall.ipv6 = false")  # fmt: skip


def policy_routing(system: System, plan: DiversionPlan) -> Iterator[Finding]:
    if not plan.tproxy_protocols:
        return
    for family in plan.families:
        subject = f"policy routing IPv{family}"
        rules = system.run(["ip", f"-{family}", "rule", "show"])
        if rules is None:
            yield fail(subject, "ip is not installed", "apt-get install iproute2")
            return
        selector = " ".join(rule_selector(plan))
        rule = parse.find_rule(parse.ip_rules(rules.stdout), plan.fwmark, plan.route_table)
        if rule is not None:
            yield ok(subject, f"ip rule {selector} (priority {rule.priority})")
        else:
            add = ["ip", f"-{family}", "rule", "add", *rule_selector(plan)]
            yield fail(subject, f"no ip rule {selector}", shlex.join(add))
        table = str(plan.route_table)
        routes = system.run(["ip", f"-{family}", "route", "show", "table", table])
        route = local_route(plan, family)
        if routes is not None and parse.has_local_default(routes.stdout):
            yield ok(subject, f"local default dev lo in table {table}")
        else:
            yield fail(subject, f"no local default route via lo in table {table}",
                       shlex.join(["ip", f"-{family}", "route", "replace", *route]))  # fmt: skip


def nft_table(system: System, plan: DiversionPlan, config: str) -> Iterator[Finding]:
    subject = f"nft table inet {plan.table}"
    ran = system.run(["nft", "-t", "list", "table", "inet", plan.table])
    apply = f"trio-tproxy firewall apply {shlex.quote(config)}"
    if ran is None:
        return  # kernel() said nft is missing
    if ran.returncode != 0:
        if _NO_PERMISSION in ran.stderr:
            yield warn(subject, "cannot list it without CAP_NET_ADMIN", _ROOT)
        else:
            yield fail(subject, "missing", apply)
        return
    found = parse.diversions(ran.stdout)
    for proto in plan.tproxy_protocols:
        port, _ = plan.tproxy_target(proto)
        ports = sorted({d.port for d in found if d.protocol == proto})
        if port in ports:
            yield ok(subject, f"diverts {proto} to port {port}")
        elif ports:
            yield fail(subject, f"diverts {proto} to port {ports[0]}, but the inbound listens "
                       f"on {port}", apply)  # fmt: skip
        else:
            yield fail(subject, f"does not divert {proto} (to port {port})", apply)
    if plan.redirect_port is not None:
        if plan.redirect_port in parse.redirect_ports(ran.stdout):
            yield ok(subject, f"redirects tcp to port {plan.redirect_port}")
        else:
            yield fail(subject, f"does not redirect tcp to port {plan.redirect_port}", apply)


def forwarding(system: System, plan: DiversionPlan) -> Iterator[Finding]:
    if plan.local:
        return  # mode = "local" proxies this host's own traffic: nothing is routed
    for key, path in (("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
                      ("net.ipv6.conf.all.forwarding", "/proc/sys/net/ipv6/conf/all/forwarding"),
                      )[: len(plan.families)]:  # fmt: skip
        value = (system.read(path) or "").strip()
        if value == "1":
            yield ok("forwarding", f"{key} = 1")
        else:
            yield fail("forwarding", f"{key} = {value or '?'}: LAN traffic that is not "
                       "diverted (bypass) is not routed", f"sysctl -w {key}=1")  # fmt: skip


def rp_filter(system: System, plan: DiversionPlan) -> Iterator[Finding]:
    present = [name for name in system.entries(_CONF) if name not in ("all", "default")]
    wanted = plan.lan_interfaces or ("all",)
    overall = _rp_value(system, "all")
    for pattern in wanted:
        names = ["all"] if pattern == "all" else fnmatch.filter(present, pattern)
        if not names and not pattern.endswith("*"):
            yield warn(f"LAN interface {pattern}", "not present now (firewall.lan_interfaces)",
                       "create it, or name the LAN interfaces in firewall.lan_interfaces "
                       "(ip link show lists them)")  # fmt: skip
        for name in names:
            value = max(overall, _rp_value(system, name))
            subject = f"rp_filter {name}"
            if value == 1:
                strict = [k for k in dict.fromkeys(("all", name)) if _rp_value(system, k) == 1]
                keys = [f"net.ipv4.conf.{k.replace('.', '/')}.rp_filter=2" for k in strict]
                yield warn(subject, "strict (1); TPROXY worked with it in our tests, but if "
                           "diverted traffic is dropped, make it loose",
                           f"sysctl -w {' '.join(keys)}")  # fmt: skip
            else:
                yield ok(subject, "loose (2)" if value == 2 else f"off ({value})")


def _rp_value(system: System, name: str) -> int:
    text = (system.read(f"{_CONF}/{name}/rp_filter") or "0").strip()
    return int(text) if text.isdigit() else 0
