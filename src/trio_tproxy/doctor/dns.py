"""Each configured DNS server asked once, through the route the gateway would use.

The servers are the runtime's own (dns/serverset.py): same transport, same outbound
and mark, so a reply here means the gateway's queries get through too. Any reply
counts, an error code included: the question is whether the path works, not what the
server knows. All servers are asked at once, each for at most ``DNS_TIMEOUT``.
"""

from __future__ import annotations

import secrets
import time

import trio

from ..dns.dialer import UpstreamError
from ..dns.exchange import build_query
from ..dns.message import QTYPE_A
from ..dns.serverset import Server
from ..runtime import Runtime
from .report import Finding, fail, ok

DNS_TIMEOUT = 2.0  # seconds; a resolver that needs longer is broken for browsing anyway
PROBE_NAME = "example.com"


async def ask_servers(runtime: Runtime) -> list[Finding]:
    servers = list(runtime.dns.servers)
    findings: list[Finding | None] = [None] * len(servers)

    async def ask(index: int, server: Server) -> None:
        findings[index] = await _ask(server)

    async with trio.open_nursery() as nursery:
        for index, server in enumerate(servers):
            nursery.start_soon(ask, index, server)
    return [finding for finding in findings if finding is not None]


async def _ask(server: Server) -> Finding:
    subject = f"DNS server {server.endpoint}"
    ip = server.endpoint.ip
    check = f"ip route get {ip}" if ip is not None else f"getent hosts {server.endpoint.host}"
    fix = f"check the path: {check} (dns.servers[{server.plan.index}])"
    assert server.upstream is not None
    limit = min(server.timeout, DNS_TIMEOUT)
    started = time.monotonic()
    with trio.move_on_after(limit):
        try:
            await server.upstream.exchange(build_query(PROBE_NAME, QTYPE_A, secrets.randbits(16)))
        except (UpstreamError, OSError) as exc:
            return fail(subject, f"no reply: {exc}", fix)
        took = (time.monotonic() - started) * 1000
        return ok(subject, f"replied in {took:.0f} ms")
    return fail(subject, f"no reply within {limit:g}s", fix)
