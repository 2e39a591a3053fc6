"""importers/ is pure: no trio, no sockets; converting loads neither."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import trio_tproxy.importers

from ..route.test_route_purity import FORBIDDEN, _imports

PACKAGE = Path(trio_tproxy.importers.__file__).parent


@pytest.mark.parametrize("module", sorted(PACKAGE.glob("*.py")), ids=lambda p: p.name)
def test_sources_import_no_io_modules(module: Path) -> None:
    assert not _imports(module.read_text()) & FORBIDDEN


def test_converting_loads_no_io_modules() -> None:
    probe = f"""
import sys
before = set(sys.modules)
from trio_tproxy.importers import GeodataPaths, convert_clash, convert_v2ray
paths = GeodataPaths("/g/country.mmdb", "/g/rules")
convert_v2ray('{{"outbounds": [{{"protocol": "freedom"}}]}}', name="x", geodata=paths)
convert_clash("tproxy-port: 7893\\nrules:\\n  - MATCH,DIRECT\\n", name="y", geodata=paths)
loaded = {{m.split(".")[0] for m in set(sys.modules) - before}}
print(",".join(sorted(loaded & set({sorted(FORBIDDEN)!r}))))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
