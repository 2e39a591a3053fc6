"""`trio-tproxy doctor`: why traffic does not go through the proxy, one line per check.

The usual answers in every transparent proxy's issue tracker -- the `ip rule` missing,
the table not applied or aimed at another port, ip_forward off, nothing listening, DNS
unreachable, a service without its capabilities or with a low file limit -- checked
against what `firewall` generates for the config (``plan_from_config``) and what the
running process has. It only reads; the one thing sent is a DNS question per server.
"""

from __future__ import annotations

import shlex

import trio

from ..config.errors import ConfigErrors
from ..config.schema import Config
from ..firewall import plan_from_config
from ..runtime import Runtime
from . import gateway, kernel
from .dns import ask_servers
from .report import Finding, exit_code, fail, render
from .system import System

__all__ = ["Finding", "System", "diagnose", "exit_code", "render"]


def diagnose(cfg: Config, config: str, system: System | None = None) -> list[Finding]:
    """Every check for ``cfg`` (named ``config`` in the fixes)."""
    system = system or System()
    findings = list(kernel.kernel(system, ipv6=cfg.firewall.ipv6))
    check = f"trio-tproxy check {shlex.quote(config)}"
    try:
        # The bypass sets are not compared: no GeoIP lookups needed.
        plan = plan_from_config(cfg, resolve_bypass=False)
    except ConfigErrors as exc:
        report = f"edit {shlex.quote(config)} (trio-tproxy firewall print reports it too)"
        findings.append(fail("firewall", f"no ruleset for this config: {exc.errors[0]}", report))
    else:
        findings += [*kernel.policy_routing(system, plan), *kernel.nft_table(system, plan, config),
                     *kernel.forwarding(system, plan), *kernel.rp_filter(system, plan)]  # fmt: skip
    listening, pid = gateway.listeners(system, cfg, config)
    findings += listening
    if pid is not None:
        findings += gateway.process(system, cfg, pid)
    if cfg.dns.servers:
        try:
            runtime = Runtime.build(cfg)  # no router cache: the doctor writes nothing
        except ConfigErrors as exc:
            findings.append(fail("DNS servers", f"not asked: {exc.errors[0]}", check))
        else:
            findings += trio.run(ask_servers, runtime)
    return findings
