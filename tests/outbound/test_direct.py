"""direct's domain_strategy over real loopback sockets with a fake resolver: as_is never
asks, use_ipv4 / use_ipv6 reach the wanted family, use_ip prefers IPv6."""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Callable, Iterator

import pytest

from trio_tproxy.config import DirectOutbound as DirectConfig
from trio_tproxy.inbound.sockopt import SO_MARK
from trio_tproxy.outbound import DirectOutbound

from .fakes import FakeResolver, make_flow

Pairs = Callable[[], tuple[socket.socket, socket.socket]]
V4 = ipaddress.IPv4Address("127.0.0.1")
V6 = ipaddress.IPv6Address("::1")
ORIGINAL = ipaddress.IPv4Address("127.0.0.2")  # what the client dialled


class Servers:
    """Listeners on 127.0.0.1, ::1 and 127.0.0.2, one port: which one answered tells
    which address the outbound chose."""

    def __init__(self) -> None:
        v6 = socket.socket(socket.AF_INET6)
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        v6.bind(("::1", 0))
        self.port = v6.getsockname()[1]
        self.by_name = {"v6": v6}
        for name, ip in (("v4", "127.0.0.1"), ("original", "127.0.0.2")):
            s = socket.socket(socket.AF_INET)
            s.bind((ip, self.port))
            self.by_name[name] = s
        for s in self.by_name.values():
            s.listen(8)
            s.setblocking(False)

    def who_answered(self) -> list[str]:
        got = []
        for name, s in self.by_name.items():
            try:
                conn, _ = s.accept()
            except BlockingIOError:
                continue
            conn.close()
            got.append(name)
        return got

    def close(self) -> None:
        for s in self.by_name.values():
            s.close()


@pytest.fixture
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.close()


RESOLVER = {"dual.test": [V4, V6], "v4only.test": [V4], "v6only.test": [V6]}


@pytest.mark.parametrize(
    ("strategy", "domain", "answered", "asked"),
    [
        ("as_is", "dual.test", ["original"], []),
        ("as_is", None, ["original"], []),
        ("use_ip", "dual.test", ["v6"], ["dual.test"]),
        ("use_ip", "v4only.test", ["v4"], ["v4only.test"]),
        ("use_ipv4", "dual.test", ["v4"], ["dual.test"]),
        ("use_ipv6", "dual.test", ["v6"], ["dual.test"]),
        # no address of the wanted family: the original IP, never the system resolver
        ("use_ipv6", "v4only.test", ["original"], ["v4only.test"]),
        ("use_ipv4", "nxdomain.test", ["original"], ["nxdomain.test"]),
        # nothing sniffed: nothing to resolve
        ("use_ip", None, ["original"], []),
    ],
)
async def test_domain_strategy(  # noqa: PLR0917
                               tcp_pairs: Pairs, servers: Servers, strategy: str,
                               domain: str | None, answered: list[str], asked: list[str]) -> None:  # fmt: skip
    resolver = FakeResolver(RESOLVER)  # type: ignore[arg-type]
    _, proxy_side = tcp_pairs()
    ob = DirectOutbound(DirectConfig(tag="direct", domain_strategy=strategy))  # type: ignore[arg-type]
    flow = make_flow(proxy_side, (ORIGINAL, servers.port), domain=domain)
    ob.resolver = resolver
    upstream = await ob.connect(flow.destination, timeout=5)
    with upstream:
        want_family = socket.AF_INET6 if answered == ["v6"] else socket.AF_INET
        assert upstream.family == want_family
    assert servers.who_answered() == answered
    assert resolver.asked == asked


async def test_direct_socket_carries_the_mark(tcp_pairs: Pairs, servers: Servers) -> None:
    if os.geteuid() != 0:
        pytest.skip("SO_MARK needs CAP_NET_ADMIN")
    _, proxy_side = tcp_pairs()
    ob = DirectOutbound(DirectConfig(tag="direct", mark=77, domain_strategy="use_ip"))  # type: ignore[arg-type]
    resolver = FakeResolver(RESOLVER)  # type: ignore[arg-type]
    flow = make_flow(proxy_side, (ORIGINAL, servers.port), domain="dual.test")
    ob.resolver = resolver
    with await ob.connect(flow.destination, timeout=5) as upstream:
        assert upstream.getsockopt(socket.SOL_SOCKET, SO_MARK) == 77
