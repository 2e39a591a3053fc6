"""Logging setup for the process (library modules only ever get their own logger)."""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
ROOT = "trio_tproxy"  # every module's logger is below it


def setup_logging(level: str) -> None:
    root = logging.getLogger(ROOT)
    if not any(getattr(h, "_trio_tproxy", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(FORMAT))
        handler._trio_tproxy = True  # type: ignore[attr-defined]
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level.upper())


def tag_logging(tag: str) -> None:
    """Name this process in every line it logs (a worker: ``[w1]``), before the logger."""
    root = logging.getLogger(ROOT)
    fmt = FORMAT.replace("%(name)s", f"[{tag}] %(name)s")
    for handler in root.handlers:
        if getattr(handler, "_trio_tproxy", False):
            handler.setFormatter(logging.Formatter(fmt))
