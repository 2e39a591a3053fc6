#!/usr/bin/env python3
"""Copy named lists, with everything they include, from a domain-list-community checkout.

    python rules/update.py /path/to/domain-list-community [LIST ...] [--into rules]

Without LIST names it refreshes the lists this directory was built for (DEFAULT_LISTS).
The closure follows ``include:`` lines and also takes every file that affiliates a rule
to a list of the closure (``&NAME``), with that file's own includes. Every copied file
must parse; the script refuses to write anything otherwise. Files of the target directory
that are no longer part of the closure are removed (README.md, LICENSE and this script
are kept). Remember to update the commit named in README.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from trio_tproxy.geo.geosite import GeositeError, GeositeFile, parse_geosite_text

DEFAULT_LISTS = ("cn", "geolocation-!cn", "category-ads-all", "private")
KEEP = {"README.md", "LICENSE", "update.py"}


def _parse_all(data: Path) -> dict[str, GeositeFile]:
    parsed: dict[str, GeositeFile] = {}
    problems: list[str] = []
    for path in sorted(data.iterdir()):
        if path.is_file():
            try:
                parsed[path.name] = parse_geosite_text(
                    path.read_text(encoding="utf-8"), path.name, str(path)
                )
            except GeositeError as exc:
                problems.extend(exc.problems)
    if problems:
        raise GeositeError(problems)
    return parsed


def closure(parsed: dict[str, GeositeFile], names: list[str]) -> set[str]:
    affiliating: dict[str, set[str]] = {}
    for name, pf in parsed.items():
        for other, _rule in pf.affiliations:
            affiliating.setdefault(other, set()).add(name)
    todo, done = [n.lower() for n in names], set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        if name not in parsed and name not in affiliating:
            raise SystemExit(f"no list {name!r} in the checkout")
        done.add(name)
        if name in parsed:
            todo.extend(inc.name for inc in parsed[name].includes)
        todo.extend(affiliating.get(name, ()))
    return {n for n in done if n in parsed}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkout", type=Path, help="domain-list-community checkout (or its data/)")
    ap.add_argument("lists", nargs="*", default=list(DEFAULT_LISTS))
    ap.add_argument("--into", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args(argv)
    data = args.checkout / "data" if (args.checkout / "data").is_dir() else args.checkout
    try:
        parsed = _parse_all(data)
    except GeositeError as exc:
        print(exc, file=sys.stderr)
        return 1
    wanted = closure(parsed, args.lists)
    for old in args.into.iterdir():
        if old.is_file() and old.name not in KEEP and old.name not in wanted:
            old.unlink()
    for name in sorted(wanted):
        shutil.copyfile(data / name, args.into / name)
    license_file = data.parent / "LICENSE"
    if license_file.is_file():
        shutil.copyfile(license_file, args.into / "LICENSE")
    print(f"copied {len(wanted)} lists into {args.into}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
