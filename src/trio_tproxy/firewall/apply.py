"""`firewall apply` / `remove`, and `firewall.auto` for `run`: the firewall's only I/O.

Everything here runs `nft` and `ip` as subprocesses (what an administrator would type,
so a failure reads the same) and turns every failure into one `FirewallError` line.

Apply order: policy routing first (harmless on its own: nothing carries the fwmark
yet), then the ruleset as ONE `nft -f` transaction that replaces our table -- the
kernel switches from the old ruleset (or none) to the new one at once, never showing a
half-built chain.  If nft refuses the ruleset and we had no table before, the routing
just added is taken away again.

What is ours: the nft table by name, the `ip rule`s by fwmark + table (every copy:
`ip rule add` stacks duplicates, and a crashed run may have left some), and the
`local default dev lo` route in that table.  Nothing else is touched.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
from pathlib import Path

from .. import caps
from ..config.errors import ConfigErrors
from ..config.schema import Config
from .from_config import plan_from_config
from .nft import local_route, render_nft, render_nft_removal, rule_selector
from .plan import DiversionPlan

log = logging.getLogger("trio_tproxy.firewall")

_TIMEOUT = 60.0  # seconds for one nft/ip command (a country-sized set takes a while)
# `ip rule del` removes one copy per call; more than this many copies is not ours.
_MAX_DUPLICATE_RULES = 64
_PACKAGES = {"nft": "nftables", "ip": "iproute2"}
_FAMILIES = (4, 6)


class FirewallError(Exception):
    """Applying or removing failed; the message is one line for the user."""


def has_net_admin(status: Path = Path("/proc/self/status")) -> bool:
    """Whether this process may change the firewall and routing."""
    return caps.has(caps.CAP_NET_ADMIN, status)


def require_net_admin(what: str) -> None:
    if not has_net_admin():
        raise FirewallError(f"{what} needs CAP_NET_ADMIN (run it as root): nothing was changed")


def apply_plan(plan: DiversionPlan) -> None:
    """Install (or replace) the plan's ruleset and policy routing; idempotent."""
    require_net_admin("firewall apply")
    had_table = table_exists(plan)
    _install_routing(plan)
    try:
        _run(["nft", "-f", "-"], input=render_nft(plan))
    except FirewallError:
        if not had_table:
            _remove_routing(plan)
        raise
    log.info("firewall applied: %s", describe(plan))


def replace_plan(old: DiversionPlan, new: DiversionPlan) -> None:
    """Switch from ``old`` to ``new`` (a reload): the new ruleset replaces our table in one
    nft transaction, then what only the old plan had (another table name, fwmark or
    route table) is removed, so no moment passes without a diversion."""
    apply_plan(new)
    if old.table != new.table:
        _run(["nft", "-f", "-"], input=render_nft_removal(old))
    if rule_selector(old) != rule_selector(new):
        for family in _FAMILIES:
            _delete_rules(old, family)
            if old.route_table != new.route_table:
                _run(["ip", f"-{family}", "route", "del", *local_route(old, family)], check=False)


def remove_plan(plan: DiversionPlan) -> list[str]:
    """Remove the plan's table and policy routing; returns what was found and removed."""
    require_net_admin("firewall remove")
    found = leftovers(plan)
    _run(["nft", "-f", "-"], input=render_nft_removal(plan))
    _remove_routing(plan)
    return found


def leftovers(plan: DiversionPlan) -> list[str]:
    """What of ours is installed now (by table name, fwmark and route table)."""
    found = [f"table inet {plan.table}"] if table_exists(plan) else []
    for family in _FAMILIES:
        shown = _run(["ip", f"-{family}", "rule", "show", *rule_selector(plan)], check=False)
        if shown.returncode == 0 and shown.stdout.strip():
            found.append(f"ip -{family} rule {' '.join(rule_selector(plan))}")
    return found


def table_exists(plan: DiversionPlan) -> bool:
    # -t (terse): without set elements, which can be a country's worth of ranges.
    return _run(["nft", "-t", "list", "table", "inet", plan.table], check=False).returncode == 0


def describe(plan: DiversionPlan) -> str:
    """One line: what the plan diverts where."""
    parts = [f"table inet {plan.table}"]
    for proto in plan.tproxy_protocols:
        port, address = plan.tproxy_target(proto)
        where = f"[{address}]" if address and ":" in address else address or ""
        parts.append(f"{proto} -> tproxy {where}:{port}")
    if plan.redirect_port is not None:
        parts.append(f"tcp -> redirect :{plan.redirect_port}")
    if plan.tproxy_protocols:
        families = ", ".join(f"IPv{f}" for f in plan.families)
        parts.append(f"fwmark {plan.fwmark} -> table {plan.route_table} ({families})")
    if plan.local:
        parts.append("mode local")
    if plan.fail_closed:
        parts.append("fail-closed")
    return "; ".join(parts)


def _install_routing(plan: DiversionPlan) -> None:
    for family in _FAMILIES:
        _delete_rules(plan, family)
        if plan.tproxy_protocols and family in plan.families:
            _run(["ip", f"-{family}", "rule", "add", *rule_selector(plan)])
            _run(["ip", f"-{family}", "route", "replace", *local_route(plan, family)])
        else:
            _run(["ip", f"-{family}", "route", "del", *local_route(plan, family)], check=False)


def _remove_routing(plan: DiversionPlan) -> None:
    for family in _FAMILIES:
        _delete_rules(plan, family)
        _run(["ip", f"-{family}", "route", "del", *local_route(plan, family)], check=False)


def _delete_rules(plan: DiversionPlan, family: int) -> None:
    for _ in range(_MAX_DUPLICATE_RULES):
        argv = ["ip", f"-{family}", "rule", "del", *rule_selector(plan)]
        if _run(argv, check=False).returncode != 0:
            return


def _run(
    argv: list[str], *, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(
            argv, input=input, capture_output=True, text=True, timeout=_TIMEOUT, check=False
        )
    except FileNotFoundError:
        package = _PACKAGES.get(argv[0], argv[0])
        raise FirewallError(f"{argv[0]} not found: install {package}") from None
    except subprocess.TimeoutExpired:
        raise FirewallError(f"{shlex.join(argv)} took more than {_TIMEOUT:g}s") from None
    if check and result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        detail = lines[0] if lines else f"exit status {result.returncode}"
        if "Operation not permitted" in detail:  # held in CapEff, refused by this netns
            detail = caps.missing_line(caps.CAP_NET_ADMIN, [argv[0]])
        raise FirewallError(f"{shlex.join(argv[:4])}: {detail}")
    return result


class AutoFirewall:
    """`firewall.auto = true` for `run`: apply once listening, remove at exit.

    `prepare` (at start, before binding) builds the plan and removes what a crashed
    earlier run left behind -- except with `fail_closed`, where the leftovers keep
    dropping traffic until `apply` atomically replaces them: better than a leak
    while the listeners come up.  `remove` runs at exit, after the flows drained (the
    rules must outlive the transparent sockets of established flows).
    """

    def __init__(self, plan: DiversionPlan | None) -> None:
        self.plan = plan

    @classmethod
    def prepare(cls, cfg: Config) -> AutoFirewall:
        if not cfg.firewall.auto:
            return cls(None)
        try:
            plan = plan_from_config(cfg)
        except ConfigErrors as exc:
            raise FirewallError("; ".join(str(e) for e in exc.errors)) from None
        require_net_admin("firewall.auto = true")
        found = leftovers(plan)
        if found:
            log.warning("firewall: found %s left by an earlier run; %s", ", ".join(found),
                        "replacing them" if plan.fail_closed else "removing them")  # fmt: skip
            if not plan.fail_closed:
                remove_plan(plan)
        return cls(plan)

    def apply(self) -> None:
        if self.plan is not None:
            apply_plan(self.plan)

    def reload(self, cfg: Config) -> None:
        """At a reload (blocking: run it off the event loop): re-apply when the ruleset
        ``cfg`` makes differs from the applied one. ``cfg`` carries the running inbounds
        (inbound changes wait for a restart, so the diversion keeps their ports). A
        failure is logged and the applied ruleset stays; switching ``auto`` itself on or
        off waits for a restart."""
        if (self.plan is not None) != cfg.firewall.auto:
            log.warning("firewall.auto changes take effect on restart")
            return
        if self.plan is None:
            return
        try:
            plan = plan_from_config(cfg)
            if plan != self.plan:
                replace_plan(self.plan, plan)
                self.plan = plan
        except ConfigErrors as exc:
            log.error("firewall: not re-applied: %s", "; ".join(str(e) for e in exc.errors))
        except FirewallError as exc:
            log.error("firewall: re-applying failed, the applied ruleset stays: %s", exc)

    def remove(self) -> None:
        """Never raises: this runs on the way out, whatever brought us there."""
        if self.plan is None:
            return
        try:
            remove_plan(self.plan)
        except FirewallError as exc:
            log.error("firewall: removing the ruleset failed: %s", exc)
        else:
            log.info("firewall removed: table inet %s", self.plan.table)
