"""`python -m netlab cleanup [--prefix tpt]`: sweep a crashed run's namespaces."""

from __future__ import annotations

import argparse
import sys

from netlab.namespace import cleanup_stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netlab")
    commands = parser.add_subparsers(dest="command", required=True)
    cleanup = commands.add_parser(
        "cleanup", help="delete PREFIX-XXXXXX-R namespaces whose owning process is gone"
    )
    cleanup.add_argument("--prefix", default="tpt")
    args = parser.parse_args(argv)
    removed = cleanup_stale(args.prefix)
    for name in removed:
        print(f"removed {name}")
    print(f"{len(removed)} stale namespace(s) removed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
