"""Command line: run | check | match | geodata.

Errors a user can cause (bad config, missing file, port in use, missing privileges)
end in clear lines on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from . import __version__
from .config import ConfigErrors, load_config
from .inbound.sockopt import SocketSetupError

DEFAULT_CONFIG = "conf/main.toml"


def _print_errors(errors: ConfigErrors) -> None:
    for error in errors.errors:
        print(error, file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    from .app import Gateway
    from .logs import setup_logging
    from .runtime import Runtime

    path = Path(args.config)
    try:
        cfg = load_config(path)
        runtime = Runtime.build(cfg)
    except ConfigErrors as exc:
        _print_errors(exc)
        return 1
    setup_logging(cfg.log.level)
    try:
        trio.run(Gateway(path, runtime).serve)
    except SocketSetupError as exc:
        print(f"error: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .runtime import Runtime

    try:
        cfg = load_config(args.config)
        Runtime.build(cfg)
    except ConfigErrors as exc:
        _print_errors(exc)
        return 1
    print(
        f"{args.config}: ok: {len(cfg.inbounds)} inbound(s), {len(cfg.outbounds)} outbound(s), "
        f"{len(cfg.routing.rules)} rule(s), {len(cfg.dns.servers)} DNS server(s); "
        f"default outbound {cfg.outbounds[0].tag!r}"
    )
    return 0


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
    run.add_argument("config", nargs="?", default=DEFAULT_CONFIG,
                     help="config file (TOML)")  # fmt: skip
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate config, rule lists and geodata",
                           description="Validate the config, the rule lists it uses and the "
                           "geodata; print every error as 'message @ $.path'.")  # fmt: skip
    check.add_argument("config", nargs="?", default=DEFAULT_CONFIG, help="config file (TOML)")
    check.set_defaults(func=cmd_check)
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
