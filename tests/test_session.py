"""The session's sniffing step without a kernel path: peek and the override rules."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
import trio
import trio.testing

from trio_tproxy.config import parse_config_text
from trio_tproxy.runtime import Runtime
from trio_tproxy.session import peek
from trio_tproxy.sniff import Sniffed

Pairs = Callable[[], tuple[socket.socket, socket.socket]]
CONFIG = """
[geodata]
rules_dir = "{rules}"
[[inbounds]]
tag = "in"
type = "tproxy"
port = 1
[inbounds.sniffing]
enabled = true
dest_override = {override}
exclude_domains = ["domain:apple.com", "keyword:pinned"]
[[outbounds]]
tag = "direct"
type = "direct"
"""


def runtime(override: str = '["http", "tls"]') -> Runtime:
    from pathlib import Path

    rules = Path(__file__).resolve().parents[1] / "rules"
    return Runtime.build(parse_config_text(CONFIG.format(rules=rules, override=override)))


@pytest.mark.parametrize(
    ("sniffed", "override", "expected"),
    [
        (Sniffed("http1", "www.example.com"), '["http", "tls"]', "www.example.com"),
        (Sniffed("tls", "www.example.com"), '["http", "tls"]', "www.example.com"),
        (Sniffed("tls", "www.example.com"), '["http"]', None),  # tls not in dest_override
        (Sniffed("quic", "www.example.com"), '["http", "tls"]', None),
        (Sniffed("tls", None), '["tls"]', None),  # no valid host name: never overrides
        (Sniffed("tls", "itunes.apple.com"), '["tls"]', None),  # exclude_domains
        (Sniffed("http1", "my-pinned-host.example"), '["http"]', None),
        (Sniffed("bittorrent", None), '["http", "tls", "quic"]', None),
    ],
)
def test_sniff_override(sniffed: Sniffed, override: str, expected: str | None) -> None:
    rt = runtime(override)
    assert rt.sniff_override(rt.config.inbounds[0], sniffed) == expected


async def test_peek_reads_a_client_hello_in_pieces(tcp_pairs: Pairs) -> None:
    client, proxy_side = tcp_pairs()
    request = b"GET /x HTTP/1.1\r\nHost: Pieces.Example.COM:8080\r\nAccept: */*\r\n\r\nbody"

    async def dribble() -> None:
        for i in range(0, len(request), 7):
            client.send(request[i : i + 7])
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dribble)
        data, sniffed = await peek(proxy_side, trio.current_time() + 5)
    assert sniffed == Sniffed("http1", "pieces.example.com")
    assert request.startswith(data)  # every byte read is handed back for replay


async def test_peek_gives_up_at_the_deadline(
    tcp_pairs: Pairs, autojump_clock: trio.testing.MockClock
) -> None:
    client, proxy_side = tcp_pairs()
    client.send(b"GET / HTTP/1.1\r\nHo")  # a valid prefix, then silence
    start = trio.current_time()
    data, sniffed = await peek(proxy_side, start + 0.3)
    assert (data, sniffed) == (b"GET / HTTP/1.1\r\nHo", None)
    assert trio.current_time() - start == pytest.approx(0.3)


async def test_peek_stops_at_once_on_unknown_protocols(tcp_pairs: Pairs) -> None:
    client, proxy_side = tcp_pairs()
    client.send(b"SSH-2.0-OpenSSH_9.2\r\n")
    with trio.fail_after(1):
        data, sniffed = await peek(proxy_side, trio.current_time() + 30)
    assert (data, sniffed) == (b"SSH-2.0-OpenSSH_9.2\r\n", None)


async def test_peek_returns_on_eof(tcp_pairs: Pairs) -> None:
    client, proxy_side = tcp_pairs()
    client.send(b"\x16\x03\x01")
    client.shutdown(socket.SHUT_WR)
    with trio.fail_after(1):
        data, sniffed = await peek(proxy_side, trio.current_time() + 30)
    assert (data, sniffed) == (b"\x16\x03\x01", None)
