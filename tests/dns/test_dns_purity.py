"""dns/message, exchange, policy, http1 and reverse are pure: no trio, no sockets, no ssl."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import trio_tproxy.dns

from ..route.test_route_purity import FORBIDDEN, _imports

PURE = ["message", "exchange", "policy", "http1", "reverse"]
DNS_DIR = Path(trio_tproxy.dns.__file__).parent


@pytest.mark.parametrize("module", PURE)
def test_sources_import_no_io_modules(module: str) -> None:
    assert not _imports((DNS_DIR / f"{module}.py").read_text()) & FORBIDDEN


def test_importing_the_pure_modules_loads_no_io_modules() -> None:
    # dnslib itself imports socket (for inet_pton/ntop in address records): tolerated.
    forbidden = FORBIDDEN - {"socket", "selectors"}
    probe = f"""
import sys, trio_tproxy.config
before = set(sys.modules)
import trio_tproxy.dns.message, trio_tproxy.dns.exchange, trio_tproxy.dns.policy, trio_tproxy.dns.http1
import trio_tproxy.dns.reverse
loaded = {{m.split(".")[0] for m in set(sys.modules) - before}}
print(",".join(sorted(loaded & set({sorted(forbidden)!r}))))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
