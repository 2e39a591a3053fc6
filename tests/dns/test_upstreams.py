"""DoT, DoH, TCP and UDP upstreams against real servers on loopback: dnsmasq behind
dnsdist, with a test CA made by openssl."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest
import trio

from trio_tproxy.config import ConfigErrors
from trio_tproxy.dns.dialer import DirectDialer
from trio_tproxy.dns.service import DnsService
from trio_tproxy.dns.upstream import StreamUpstream
from trio_tproxy.inbound.sockopt import SO_MARK

from .servers import (
    Certs,
    Dnsdist,
    Dnsmasq,
    free_port,
    host_popen,
    host_run,
    make_certs,
    missing_binaries,
    wait_answers,
)

MakeService = Callable[..., DnsService]
RECORDS = {f"n{i}.example": [f"10.7.0.{i}"] for i in range(1, 9)}


@attrs.frozen
class Upstreams:
    certs: Certs
    dnsmasq: Dnsmasq
    plain: int
    dot: int
    doh: int


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    if reason := missing_binaries("dnsmasq", "dnsdist", "openssl", "dig"):
        pytest.skip(reason)
    workdir = tmp_path_factory.mktemp("upstreams")
    certs = make_certs(workdir / "certs", "dns.test", ["127.0.0.1"])
    backend = free_port()
    dnsmasq = Dnsmasq(
        host_popen, workdir, "backend", listen="127.0.0.1", port=backend, records=RECORDS
    )
    plain, dot, doh = free_port(), free_port(), free_port()
    dnsdist = Dnsdist(host_popen, workdir, certs, "127.0.0.1", plain=plain, dot=dot, doh=doh,
                      backend=f"127.0.0.1:{backend}")  # fmt: skip
    try:
        wait_answers(host_run, "127.0.0.1", plain, "n1.example")
        yield Upstreams(certs, dnsmasq, plain, dot, doh)
    finally:
        dnsdist.stop()
        dnsmasq.stop()


def one_server(address: str, *lines: str) -> str:
    return "\n".join(["[[dns.servers]]", f'address = "{address}"', *lines])


@pytest.mark.parametrize(
    "address",
    [
        "tls://127.0.0.1:{dot}",
        "tls://dns.test:{dot}",  # bootstrapped through hosts; SNI and name checked
        "https://127.0.0.1:{doh}/dns-query",
        "https://dns.test:{doh}/dns-query",
    ],
)
async def test_dot_and_doh_answer_and_reuse_connections(
    upstreams: Upstreams, make_service: MakeService, address: str
) -> None:
    formatted = address.format(dot=upstreams.dot, doh=upstreams.doh)
    service = make_service("\n".join([
        "[dns.hosts]", '"dns.test" = "127.0.0.1"',
        one_server(formatted, f'tls_ca = "{upstreams.certs.ca}"'),
    ]))  # fmt: skip
    for i in range(1, 6):
        got = await service.lookup(f"n{i}.example", 1)
        assert got.addresses == (ipaddress.ip_address(f"10.7.0.{i}"),)
    upstream = service.servers[0].upstream
    assert isinstance(upstream, StreamUpstream)
    assert upstream.opened == 1  # five queries, one TLS connection


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:{plain}", "127.0.0.1:{plain}"])
async def test_plain_tcp_and_udp(upstreams: Upstreams, make_service: MakeService,
                                 address: str) -> None:  # fmt: skip
    service = make_service(one_server(address.format(plain=upstreams.plain)))
    assert await service.resolve("n7.example") == (ipaddress.ip_address("10.7.0.7"),)


async def test_untrusted_certificate_fails_and_the_next_server_answers(
    upstreams: Upstreams, make_service: MakeService
) -> None:
    service = make_service("\n".join([
        one_server(f"tls://127.0.0.1:{upstreams.dot}"),  # the system CAs do not know ours
        one_server(f"https://127.0.0.1:{upstreams.doh}/dns-query"),
        one_server(f"127.0.0.1:{upstreams.plain}"),
    ]))  # fmt: skip
    started = trio.current_time()
    got = await service.lookup("n8.example", 1)
    assert got.addresses == (ipaddress.ip_address("10.7.0.8"),)
    assert trio.current_time() - started < 3  # verification failures do not wait for timeouts


async def test_wrong_path_is_an_http_error_not_an_answer(upstreams: Upstreams,
                                                         make_service: MakeService) -> None:  # fmt: skip
    service = make_service(one_server(f"https://127.0.0.1:{upstreams.doh}/nope",
                                      f'tls_ca = "{upstreams.certs.ca}"', 'timeout = "2s"'))  # fmt: skip
    assert (await service.lookup("n1.example", 1)).rcode == 2  # SERVFAIL


def test_unreadable_ca_file_is_a_config_error(make_service: MakeService, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ConfigErrors) as err:
        make_service(one_server("tls://127.0.0.1:853", f'tls_ca = "{bad}"'))
    assert "$.dns.servers[0].tls_ca" in str(err.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_MARK needs CAP_NET_ADMIN")
@pytest.mark.parametrize("routed", [True, False])
async def test_upstream_sockets_carry_their_outbounds_mark(
    make_service: MakeService, routed: bool
) -> None:
    # routed: no `outbound`, a rule sends inbound "dns" to the marked outbound (v2ray)
    extra = '[[outbounds]]\ntag = "marked"\ntype = "direct"\nmark = 77\n'
    if routed:
        extra += '[[routing.rules]]\ninbound_tag = ["dns"]\noutbound = "marked"\n'
    line = "" if routed else 'outbound = "marked"'
    service = make_service(one_server("127.0.0.1:53", line), extra=extra)
    server = service.servers[0]
    ip, dialer = await service.servers._route(server)
    assert isinstance(dialer, DirectDialer) and dialer.mark == 77
    endpoint = await dialer.open_datagram((ip, 53))
    try:
        sock = endpoint._sock  # type: ignore[attr-defined]
        assert sock.getsockopt(socket.SOL_SOCKET, SO_MARK) == 77
    finally:
        endpoint.close()
