"""Command line: run | check | match | geodata | firewall | service | doctor | import.

Errors a user can cause (bad config, missing file, port in use, missing privileges)
end in clear lines on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, ConfigErrors, load_config

DEFAULT_CONFIG = "conf/main.toml"


def _print_errors(errors: ConfigErrors) -> None:
    for error in errors.errors:
        print(error, file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    import trio

    from .app import Gateway, warn_not_yet_in_effect
    from .caps import refusals
    from .firewall.apply import FirewallError
    from .inbound.sockopt import SocketSetupError
    from .logs import setup_logging
    from .router_cache import RouterCache
    from .runtime import Runtime
    from .workers.supervisor import Supervisor, worker_count

    path = Path(args.config)
    try:
        cfg = load_config(path)
        if missing := refusals(cfg):  # before anything is bound or compiled
            for line in missing:
                print(f"error: {line}", file=sys.stderr)
            return 1
        runtime = Runtime.build(cfg, router_cache=RouterCache.default())
    except ConfigErrors as exc:
        _print_errors(exc)
        return 1
    setup_logging(cfg.log.level)
    warn_not_yet_in_effect(cfg)
    workers = worker_count(cfg.process.workers)
    try:
        if workers > 1:
            return Supervisor(path, runtime, workers).run()
        trio.run(Gateway(path, runtime).serve)
    except SocketSetupError as exc:
        print(f"error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    except FirewallError as exc:  # firewall.auto
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .router_cache import RouterCache
    from .runtime import Runtime, not_yet_in_effect

    try:
        cfg = load_config(args.config)
        # Every list is parsed and checked afresh; the result is kept for `match` and `run`.
        Runtime.build(cfg, router_cache=RouterCache.default(write_only=True))
        if cfg.firewall.auto:  # `run` will apply it: check what it would refuse
            from .firewall import plan_from_config

            plan_from_config(cfg)
    except ConfigErrors as exc:
        _print_errors(exc)
        return 1
    for warning in not_yet_in_effect(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    print(
        f"{args.config}: ok: {len(cfg.inbounds)} inbound(s), {len(cfg.outbounds)} outbound(s), "
        f"{len(cfg.routing.rules)} rule(s), {len(cfg.dns.servers)} DNS server(s); "
        f"default outbound {cfg.outbounds[0].tag!r}"
    )
    return 0


def cmd_match(args: argparse.Namespace) -> int:
    import ipaddress
    import json

    from .geo import GeoData
    from .route import (
        FlowFacts,
        NeedIps,
        compile_router,
        explain,
        parse_target,
        render_json,
        render_text,
    )
    from .router_cache import RouterCache

    try:
        cfg = load_config(args.config)
        # Only the router: match answers offline without building outbounds or DNS
        # (and without importing trio) unless --resolve needs the configured DNS.
        router = compile_router(cfg, GeoData.load(cfg.geodata), cache=RouterCache.default())
        source = ipaddress.ip_address(args.source) if args.source else None
    except ConfigErrors as exc:
        _print_errors(exc)
        return 1
    except ValueError as exc:
        print(f"error: --source: {exc}", file=sys.stderr)
        return 2
    dst_ip, domain = parse_target(args.target)
    if dst_ip is None and not domain:
        print(f"error: {args.target!r} is neither an IP address nor a domain", file=sys.stderr)
        return 2
    facts = FlowFacts(
        network=args.network, dst_ip=dst_ip, dst_port=args.port, domain=domain,
        src_ip=source, inbound_tag=args.inbound or cfg.inbounds[0].tag,
        protocol="http1" if args.protocol == "http" else args.protocol,
    )  # fmt: skip
    resolved = None
    if args.resolve and domain and isinstance(router.decide(facts), NeedIps):
        import trio

        from .runtime import Runtime

        try:
            runtime = Runtime.build(cfg)
        except ConfigErrors as exc:
            _print_errors(exc)
            return 1
        resolved = trio.run(runtime.dns.resolve, domain)
    explanation = explain(router, facts, resolved)
    group = _group_of(cfg, explanation.decision.outbound)
    if args.json:
        print(json.dumps({**render_json(explanation), **group}, indent=2))
    else:
        print(render_text(explanation))
        if group:
            info = group["group"]
            print(f"group:    {info['tag']} ({info['type']}: {', '.join(info['members'])})")
            print(f"member:   {group['member'] or 'chosen by probes while running'}")
    return 0


def _group_of(cfg: Config, tag: str) -> dict[str, Any]:
    """``group`` and ``member`` for ``match`` when ``tag`` is a group; else nothing."""
    from .config import GROUP_TYPES

    ob = cfg.outbound(tag)
    if not isinstance(ob, GROUP_TYPES):
        return {}
    from .outbound.selections import SelectionStore, describe_group  # imports trio: only now

    return describe_group(ob, SelectionStore.default())


def cmd_geodata_build(args: argparse.Namespace) -> int:
    from .geo.build import GeodataBuildError, build_country_mmdb

    try:
        stats = build_country_mmdb([Path(s) for s in args.sources], Path(args.output))
    except GeodataBuildError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.output}: {stats}")
    return 0


def cmd_firewall(args: argparse.Namespace) -> int:
    from .firewall import plan_from_config, render_script
    from .firewall.apply import FirewallError, apply_plan, describe, remove_plan

    if args.iptables and args.action != "print":
        print("error: --iptables only goes with print (apply and remove use nft)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config)
        # remove finds the ruleset by name, fwmark and table: no GeoIP lookups needed
        plan = plan_from_config(cfg, resolve_bypass=args.action != "remove")
        if args.action == "print":
            print(render_script(plan, iptables=args.iptables, source=args.config), end="")
        elif args.action == "apply":
            apply_plan(plan)
            print(f"applied: {describe(plan)}")
        else:
            found = remove_plan(plan)
            print(f"removed: {', '.join(found) or 'nothing was installed'}")
    except ConfigErrors as exc:
        _print_errors(exc)
        return 1
    except (FirewallError, ValueError) as exc:  # ValueError: what iptables cannot express
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_service_print(args: argparse.Namespace) -> int:
    from .service import console_script, unit

    path = Path(args.config).absolute()
    try:
        cfg = load_config(path)
    except ConfigErrors as exc:
        _print_errors(exc)
        return 1
    sys.stdout.write(unit(path, executable=console_script(),
                          max_connections=cfg.policy.max_connections,
                          grace=cfg.policy.grace.seconds))  # fmt: skip
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose, exit_code, render

    try:
        findings = diagnose(load_config(args.config), args.config)
    except ConfigErrors as exc:
        _print_errors(exc)
        return 1
    sys.stdout.write(render(findings))
    return exit_code(findings)


def cmd_import(args: argparse.Namespace) -> int:
    from .importers import UnreadableInput, convert_clash, convert_v2ray
    from .importers.assets import find_geodata

    source = Path(args.file)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        print(f"error: cannot read {args.file}: {getattr(exc, 'strerror', None) or exc}",
              file=sys.stderr)  # fmt: skip
        return 1
    geodata = find_geodata(args.format, source, Path(args.assets) if args.assets else None)
    convert = convert_v2ray if args.format == "v2ray" else convert_clash
    try:
        result = convert(text, name=str(source.absolute()), geodata=geodata)
    except UnreadableInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.output:
        try:
            Path(args.output).write_text(result.toml, encoding="utf-8")
        except OSError as exc:
            print(f"error: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(result.toml)
    for omission in result.omissions:
        print(omission, file=sys.stderr)
    if result.omissions:
        print(f"import: {len(result.omissions)} construct(s) above were not converted as they "
              "were", file=sys.stderr)  # fmt: skip
        return 3
    return 0


def _config_argument(command: argparse.ArgumentParser) -> None:
    """The optional CONFIG positional every config-reading command takes."""
    command.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help="config file (TOML)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trio-tproxy",
        description="Transparent proxy for Linux gateways (TPROXY/REDIRECT), on Trio.",
    )
    parser.add_argument("--version", action="version", version=f"trio-tproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="start the gateway", description=(
        "Start the gateway. Logs one line when every listener is bound. SIGTERM/SIGINT: "
        "stop accepting, let flows drain for policy.grace, exit 0. SIGHUP: reload the "
        "config."))  # fmt: skip
    _config_argument(run)
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate config, rule lists and geodata",
                           description="Validate the config, the rule lists it uses and the "
                           "geodata; print every error as 'message @ $.path'.")  # fmt: skip
    _config_argument(check)
    check.set_defaults(func=cmd_check)

    match = sub.add_parser("match", help="which outbound and rule a domain or IP would get",
                           description="Offline rule test: prints the chosen outbound, the rule "
                           "that matched (or 'default') and why.")  # fmt: skip
    match.add_argument("target", help="a domain or an IP address")
    match.add_argument("-c", "--config", default=DEFAULT_CONFIG, help="config file (TOML)")
    match.add_argument("--port", type=int, default=443, help="destination port (default 443)")
    match.add_argument("--network", choices=("tcp", "udp"), default="tcp")
    match.add_argument("--protocol", choices=("http", "tls", "quic", "bittorrent", "dns"),
                       help="the sniffed protocol")  # fmt: skip
    match.add_argument("--source", help="the client's IP address")
    match.add_argument("--inbound", help="inbound tag (default: the first inbound)")
    match.add_argument(
        "--resolve",
        action="store_true",
        help="let IP rules see the domain's addresses, as domain_strategy would",
    )
    match.add_argument("--json", action="store_true", help="one JSON object")
    match.set_defaults(func=cmd_match)

    geodata = sub.add_parser("geodata", help="build GeoIP data",
                             description="GeoIP data for geoip:CC rules.")  # fmt: skip
    geodata_sub = geodata.add_subparsers(dest="geodata_command", required=True, metavar="ACTION")
    build = geodata_sub.add_parser(
        "build", help="build a country MaxMind DB from IP-range lists",
        description="Build a country MaxMind DB from Tor/IPFire geoip and geoip6 files (as "
        "shipped by Debian's tor-geoipdb: /usr/share/tor/geoip, /usr/share/tor/geoip6) or "
        "'cidr,cc' CSV files.",
    )  # fmt: skip
    build.add_argument("sources", nargs="+", metavar="SOURCE")
    build.add_argument("-o", "--output", required=True, metavar="FILE")
    build.set_defaults(func=cmd_geodata_build)

    firewall = sub.add_parser(
        "firewall", help="print, apply or remove the rules that divert traffic to the proxy",
        description="The nftables ruleset and policy routing (IPv4 and IPv6) that divert "
        "traffic to the configured inbounds, from the [firewall] section. print: a shell "
        "script (nft, or iptables/ip6tables with --iptables); apply: install it atomically "
        "(idempotent); remove: take it away without a trace. apply and remove need "
        "CAP_NET_ADMIN. docs/firewall.md explains every rule.",
    )  # fmt: skip
    firewall_sub = firewall.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, what in (
        ("print", "print the rules as a shell script"),
        ("apply", "install the rules (atomic, idempotent; needs CAP_NET_ADMIN)"),
        ("remove", "remove the rules without a trace (needs CAP_NET_ADMIN)"),
    ):
        command = firewall_sub.add_parser(action, help=what, description=f"Firewall: {what}.")
        _config_argument(command)
        command.add_argument("--iptables", action="store_true", help=(
            "iptables/ip6tables commands instead of nft" if action == "print" else argparse.SUPPRESS
        ))  # fmt: skip
        command.set_defaults(func=cmd_firewall)

    service = sub.add_parser("service", help="run as a systemd service",
                             description="The systemd unit for this installation.")  # fmt: skip
    service_sub = service.add_subparsers(dest="service_command", required=True, metavar="ACTION")
    unit = service_sub.add_parser(
        "print", help="print the systemd unit (Type=notify, own user, three capabilities)",
        description="Print a systemd unit that runs this installation's trio-tproxy with "
        "CONFIG (made absolute) as user trio-tproxy with CAP_NET_ADMIN CAP_NET_RAW "
        "CAP_NET_BIND_SERVICE only. README 'Running as a service' shows how to install it.",
    )  # fmt: skip
    _config_argument(unit)
    unit.set_defaults(func=cmd_service_print)

    doctor = sub.add_parser(
        "doctor", help="check why traffic may not go through the proxy",
        description="Check the machine as it is against CONFIG: kernel support, policy "
        "routing, the nft table, ip_forward, rp_filter, a listener on each port, the "
        "running process's capabilities and file limit, each DNS server. One line each: "
        "✔, ✘ with the command that fixes it, or ⚠ (advice). Changes nothing; exit 1 if "
        "anything is ✘. Run it as root, in the gateway's network namespace.",
    )  # fmt: skip
    _config_argument(doctor)
    doctor.set_defaults(func=cmd_doctor)
    imports = sub.add_parser(
        "import", help="convert a v2ray/Xray or Clash/mihomo config to this TOML",
        description="Convert a v2ray/Xray JSON or Clash/mihomo YAML config. What has no "
        "equivalent is listed on stderr, one line each with its JSON/YAML path. Exit 0: "
        "all converted; 3: converted with omissions; 1: unreadable input.",
    )  # fmt: skip
    imports.add_argument("format", choices=("v2ray", "clash"), help="the source's format")
    imports.add_argument("file", metavar="FILE", help="the v2ray JSON or Clash YAML file")
    imports.add_argument("-o", "--output", metavar="OUT.toml", help="write here (default: stdout)")
    imports.add_argument("--assets", metavar="DIR", help="where geosite.dat, geoip.dat "
                         "(Clash: Country.mmdb) are; default: beside FILE")  # fmt: skip
    imports.set_defaults(func=cmd_import)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
