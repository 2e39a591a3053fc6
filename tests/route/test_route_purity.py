"""route/ and geo/ are pure: they import neither trio nor socket (nor other I/O modules)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import trio_tproxy.geo
import trio_tproxy.route

FORBIDDEN = {"trio", "socket", "asyncio", "selectors", "ssl"}
PACKAGES = [Path(trio_tproxy.route.__file__).parent, Path(trio_tproxy.geo.__file__).parent]


def _imports(source: str) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", sorted(p for d in PACKAGES for p in d.glob("*.py")), ids=str)
def test_sources_import_no_io_modules(module: Path) -> None:
    assert not _imports(module.read_text()) & FORBIDDEN


def test_importing_and_compiling_loads_no_io_modules(tmp_path: Path) -> None:
    """In a fresh interpreter, compiling a router with geosite lists and geoip:private and
    deciding a flow loads no trio/socket (maxminddb, which does, is only imported when a
    country database is opened)."""
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "x").write_text("x.com\n")
    probe = f"""
import sys, ipaddress, trio_tproxy.config
before = set(sys.modules)
from trio_tproxy.config import parse_config_text
from trio_tproxy.geo import GeoData
from trio_tproxy.route import FlowFacts, compile_router
cfg = parse_config_text('''
[[inbounds]]
tag = "in"
type = "tproxy"
port = 1
[[outbounds]]
tag = "direct"
type = "direct"
[[routing.rules]]
domain = ["geosite:x"]
ip = ["geoip:private"]
outbound = "direct"
''')
router = compile_router(cfg, GeoData({str(tmp_path / "rules")!r}, {str(tmp_path / "no.mmdb")!r}))
router.decide(FlowFacts("tcp", ipaddress.ip_address("10.0.0.1"), 80, domain="x.com"))
loaded = {{m.split(".")[0] for m in set(sys.modules) - before}}
print(",".join(sorted(loaded & set({sorted(FORBIDDEN)!r}))))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
