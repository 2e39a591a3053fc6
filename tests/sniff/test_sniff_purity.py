"""The sniffers are pure: no module in trio_tproxy.sniff imports trio or socket."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import trio_tproxy.sniff

FORBIDDEN = {"trio", "socket", "asyncio", "selectors", "ssl"}
PACKAGE_DIR = Path(trio_tproxy.sniff.__file__).parent


def _imported_top_level_names(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_sources_import_no_io_modules() -> None:
    modules = sorted(PACKAGE_DIR.glob("*.py"))
    assert {m.stem for m in modules} >= {"outcome", "http", "tls", "quic", "bittorrent", "dns"}
    for module in modules:
        imported = _imported_top_level_names(module.read_text())
        assert not imported & FORBIDDEN, f"{module.name} imports {imported & FORBIDDEN}"


def test_importing_the_package_loads_no_io_modules() -> None:
    """In a fresh interpreter: what trio_tproxy.sniff adds to sys.modules (over what
    the parent package itself loads) has no trio, socket, asyncio, ssl."""
    probe = (
        "import sys, trio_tproxy\n"
        "before = set(sys.modules)\n"
        "import trio_tproxy.sniff\n"
        + "".join(f"import trio_tproxy.sniff.{m.name}\n"
                  for m in pkgutil.iter_modules([str(PACKAGE_DIR)]))
        + "added = {name.split('.')[0] for name in set(sys.modules) - before}\n"
        f"print(sorted(added & set({sorted(FORBIDDEN)!r})))\n"
    )  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
