"""doctor/dns.py: any reply counts, a failure or silence is ✘ with where to look."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import trio

from trio_tproxy.dns.dialer import UpstreamError
from trio_tproxy.dns.serverset import Server
from trio_tproxy.dns.upstream import Endpoint
from trio_tproxy.doctor.dns import _ask


class Upstream:
    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.queries: list[bytes] = []

    async def exchange(self, query: bytes) -> bytes:
        self.queries.append(query)
        if self.behaviour == "silent":
            await trio.sleep_forever()
        if self.behaviour == "error":
            raise UpstreamError("receive failed: Connection refused")
        return b"\x00\x00\x81\x83" + bytes(8)  # NXDOMAIN: a reply all the same


def server(behaviour: str, host: str = "10.0.0.53", timeout: float = 4.0) -> Server:
    plan: Any = SimpleNamespace(index=3)
    return Server(plan, Endpoint("udp", host, 53), timeout, None, Upstream(behaviour))


async def test_any_reply_counts() -> None:
    finding = await _ask(server("reply"))
    assert finding.status == "ok" and finding.line().startswith(
        "✔ DNS server udp://10.0.0.53:53: replied in "
    )


async def test_an_error_names_the_path_to_check() -> None:
    assert (await _ask(server("error"))).line() == (
        "✘ DNS server udp://10.0.0.53:53: no reply: receive failed: Connection refused "
        "— fix: check the path: ip route get 10.0.0.53 (dns.servers[3])"
    )


async def test_silence_is_bounded_by_the_shorter_timeout(autojump_clock: trio.abc.Clock) -> None:
    start = trio.current_time()
    assert (await _ask(server("silent"))).text == "no reply within 2s"
    assert trio.current_time() - start == 2.0
    assert (await _ask(server("silent", timeout=0.5))).text == "no reply within 0.5s"
    named = await _ask(server("silent", host="dns.example"))
    assert named.fix == "check the path: getent hosts dns.example (dns.servers[3])"
