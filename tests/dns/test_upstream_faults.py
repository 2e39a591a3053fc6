"""A DNS upstream that answers garbage, a message cut short or an answer under another
ID gives no answer: the splitter moves on to the next server (issue 13, proof)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio

from trio_tproxy.dns.service import DnsService

from .fake_dns import FakeDns
from .test_service import FOREIGN, addresses, ask, server

MakeService = Callable[..., DnsService]
MakeFake = Callable[..., FakeDns]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("fault", ["garbage", "truncated", "wrong_id"])
async def test_a_faulty_server_makes_the_splitter_ask_the_next(
    make_service: MakeService, fake_dns: MakeFake, fault: str, transport: str
) -> None:
    bad, good = fake_dns(FOREIGN, **{fault: True}), fake_dns(FOREIGN)
    scheme = "tcp://" if transport == "tcp" else ""
    service = make_service("\n".join([
        server(f"{scheme}127.0.0.1:{bad.port}", 'timeout = "1s"'),
        server(f"{scheme}127.0.0.1:{good.port}"),
    ]))  # fmt: skip
    start = trio.current_time()
    with trio.fail_after(3):  # at most the faulty server's timeout, then the next one
        record = await ask(service, "x.com")
    assert addresses(record) == ["10.2.0.2"]
    assert bad.count("x.com", transport=transport) >= 1
    assert good.count("x.com", transport=transport) == 1
    # Over UDP a reply that does not parse as the answer to our query may be a spoof:
    # it is waited past until the server's timeout (1 s); then the next one answers (the
    # margin is for a loaded test machine).
    assert trio.current_time() - start < 2.5
