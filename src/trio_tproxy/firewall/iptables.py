"""The same diversion as `firewall.nft`, as iptables/ip6tables commands -- text only.

For systems without nft.  One chain per nft chain, named after the plan's table
(`trio_tproxy`, `trio_tproxy_divert`, `trio_tproxy_out`, ...), hooked into the
built-in chains with one jump each, so removal is "unhook, flush, delete".

Differences from the nft ruleset, because iptables cannot say otherwise:

- The bypass sets become one `-d CIDR -j RETURN` rule per range (a set needs the
  separate `ipset` tool); fine for the reserved ranges, slow for a whole country.
- iptables' TPROXY target DROPS a packet that finds no listener (nft's tproxy lets it
  through), so these rules are fail-closed whatever `fail_closed` says.
- A rule marks and accepts in two steps, so the fast path jumps to a `_mark` chain.
- `-i` takes one interface per rule and spells nft's wildcard `eth*` as `eth+`.
"""

from __future__ import annotations

import ipaddress

from trio_tproxy.firewall.plan import DiversionPlan

# iptables chain names are at most 28 characters; the longest suffix is "_nat_out".
MAX_CHAIN_NAME = 28
_SUFFIXES = ("", "_divert", "_mark", "_out", "_nat", "_nat_out")
_COMMANDS = {4: "iptables", 6: "ip6tables"}


def render_iptables(plan: DiversionPlan) -> list[list[str]]:
    """argv lists that install the plan's rules (policy routing excluded).

    Raises ValueError for a plan iptables cannot express (a long table name, an
    interface name ending in '+', which iptables would read as a wildcard).
    """
    _check_expressible(plan)
    commands: list[list[str]] = []
    for family in plan.families:
        rules = _Rules(plan, family)
        if plan.tproxy_protocols:
            commands += rules.mangle()
        if plan.redirect_port is not None:
            commands += rules.nat()
    return commands


def render_iptables_removal(plan: DiversionPlan) -> list[list[str]]:
    """argv lists that remove every chain `render_iptables` can create, IPv4 and IPv6.

    Each may fail harmlessly (nothing to remove); run them all, in order.
    """
    _check_expressible(plan)
    t = plan.table
    commands: list[list[str]] = []
    for command in _COMMANDS.values():
        hooks = [
            ("mangle", "PREROUTING", t),
            ("mangle", "OUTPUT", f"{t}_out"),
            ("nat", "PREROUTING", f"{t}_nat"),
            ("nat", "OUTPUT", f"{t}_nat_out"),
        ]
        for table, builtin, chain in hooks:
            commands.append([command, "-w", "-t", table, "-D", builtin, "-j", chain])
        chains = [("mangle", f"{t}{s}") for s in _SUFFIXES[:4]]
        chains += [("nat", f"{t}{s}") for s in _SUFFIXES[4:]]
        # Flush all before deleting any: a chain cannot go while another jumps to it.
        commands += [[command, "-w", "-t", table, "-F", chain] for table, chain in chains]
        commands += [[command, "-w", "-t", table, "-X", chain] for table, chain in chains]
    return commands


def _check_expressible(plan: DiversionPlan) -> None:
    longest = len(plan.table) + max(len(s) for s in _SUFFIXES)
    if longest > MAX_CHAIN_NAME:
        limit = MAX_CHAIN_NAME - max(len(s) for s in _SUFFIXES)
        raise ValueError(
            f"table name {plan.table!r} is too long for iptables chain names "
            f"(at most {limit} characters)"
        )
    for name in plan.lan_interfaces:
        if name.endswith("+"):
            raise ValueError(f"interface {name!r}: iptables would read the '+' as a wildcard")


class _Rules:
    """The commands for one family."""

    def __init__(self, plan: DiversionPlan, family: int) -> None:
        self.plan = plan
        self.family = family
        self.command = _COMMANDS[family]
        self.chain = plan.table

    def _cmd(self, table: str, *args: str) -> list[str]:
        return [self.command, "-w", "-t", table, *args]

    def _skips(self, table: str, chain: str, *, output: bool) -> list[list[str]]:
        plan = self.plan
        rules = [["-m", "mark", "--mark", str(mark)] for mark in plan.proxy_marks]
        if output:
            rules += [["-m", "owner", "--uid-owner", user] for user in plan.skip_users]
        types = ("LOCAL", "BROADCAST", "MULTICAST") if self.family == 4 else ("LOCAL", "MULTICAST")
        # (ip6tables' addrtype has no BROADCAST: IPv6 has none.)
        rules += [["-m", "addrtype", "--dst-type", kind] for kind in types]
        bypass = plan.bypass_v4 if self.family == 4 else plan.bypass_v6
        rules += [["-d", cidr] for cidr in bypass]
        return [self._cmd(table, "-A", chain, *match, "-j", "RETURN") for match in rules]

    def _interfaces(self) -> list[list[str]]:
        """One `-i` match per LAN interface, or one empty match for any interface."""
        if not self.plan.lan_interfaces:
            return [[]]
        return [["-i", name.removesuffix("*") + "+" if name.endswith("*") else name]
                for name in self.plan.lan_interfaces]  # fmt: skip

    def mangle(self) -> list[list[str]]:
        plan, t, mark = self.plan, self.chain, str(self.plan.fwmark)
        divert, marker = f"{t}_divert", f"{t}_mark"
        out = [self._cmd("mangle", "-N", name) for name in (t, divert, marker)]
        out += self._skips("mangle", t, output=False)
        for proto in plan.tproxy_protocols:
            out.append(self._cmd("mangle", "-A", t, "-p", proto, "-m", "socket",
                                 "--transparent", "-j", marker))  # fmt: skip
        if plan.local and plan.lan_interfaces:
            out.append(self._cmd("mangle", "-A", t, "-i", "lo", "-m", "mark", "--mark", mark,
                                 "-j", divert))  # fmt: skip
        out += [self._cmd("mangle", "-A", t, *iface, "-j", divert) for iface in self._interfaces()]
        out.append(self._cmd("mangle", "-A", marker, "-j", "MARK", "--set-mark", mark))
        out.append(self._cmd("mangle", "-A", marker, "-j", "ACCEPT"))
        for proto in plan.tproxy_protocols:
            target = self._tproxy_target(proto)
            if target is not None:
                out.append(self._cmd("mangle", "-A", divert, "-p", proto, "-j", "TPROXY",
                                     *target, "--tproxy-mark", mark))  # fmt: skip
            if plan.fail_closed:
                # Only reached when the TPROXY rule above is missing for this family
                # (a listener bound to an address of the other family).
                out.append(self._cmd("mangle", "-A", divert, "-p", proto, "-j", "DROP"))
        out.append(self._cmd("mangle", "-A", "PREROUTING", "-j", t))
        if plan.local:
            out += self._output()
        return out

    def _tproxy_target(self, proto: str) -> list[str] | None:
        port, address = self.plan.tproxy_target(proto)
        if address is None:
            return ["--on-port", str(port)]
        if ipaddress.ip_address(address).version != self.family:
            return None
        return ["--on-ip", address, "--on-port", str(port)]

    def _output(self) -> list[list[str]]:
        chain, mark = f"{self.chain}_out", str(self.plan.fwmark)
        out = [self._cmd("mangle", "-N", chain)]
        out += self._skips("mangle", chain, output=True)
        out.append(self._cmd("mangle", "-A", chain, "-m", "conntrack", "--ctdir", "REPLY",
                             "-j", "RETURN"))  # fmt: skip
        for proto in self.plan.tproxy_protocols:
            out.append(self._cmd("mangle", "-A", chain, "-p", proto, "-j", "MARK",
                                 "--set-mark", mark))  # fmt: skip
        out.append(self._cmd("mangle", "-A", "OUTPUT", "-j", chain))
        return out

    def nat(self) -> list[list[str]]:
        chain, port = f"{self.chain}_nat", str(self.plan.redirect_port)
        redirect = ["-p", "tcp", "-j", "REDIRECT", "--to-ports", port]
        out = [self._cmd("nat", "-N", chain)]
        out += self._skips("nat", chain, output=False)
        out += [self._cmd("nat", "-A", chain, *iface, *redirect) for iface in self._interfaces()]
        out.append(self._cmd("nat", "-A", "PREROUTING", "-j", chain))
        if self.plan.local:
            local = f"{self.chain}_nat_out"
            out.append(self._cmd("nat", "-N", local))
            out += self._skips("nat", local, output=True)
            out.append(self._cmd("nat", "-A", local, *redirect))
            out.append(self._cmd("nat", "-A", "OUTPUT", "-j", local))
        return out
