"""How each outbound answered its last probes, and the probe itself.

A probe is one HTTP/1.1 GET for the group's ``url`` sent through the member's own
``open_stream``: the member's own path and mark (a proxy asks its server, direct dials
from this host), never through our own diversion. The delay is the time from asking
the outbound for a stream to the response's status line, as mihomo measures it; 2xx
and 3xx are healthy (a captive portal's redirect still proves the path works, and
``generate_204`` answers 204). The caller records the result in the
:class:`HealthBook`: the controller API probes on demand through the same function.
"""

from __future__ import annotations

import errno
import ipaddress
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs
import trio

from ..dial import DialError, ip_literal
from ..resolver import Resolver
from ..sock import close_socket
from .base import (
    Destination,
    FlowRefused,
    LocalAnswer,
    SocketUpstream,
    StreamUpstream,
    Upstream,
    stream_capable,
)
from .group_choice import alive

# mihomo keeps the last 10 delays per proxy (adapter.go defaultHistoriesNum).
HISTORY = 10
# A status line and headers fit easily; a server sending more before its status line
# is not the probe endpoint we asked for.
MAX_RESPONSE_HEAD = 8192
# Placeholder address for a probe URL given by name through a proxy: the proxy gets
# the name (Destination.domain) and resolves it itself.
_UNSPECIFIED = ipaddress.IPv4Address(0)
# Groups nest without cycles (check); this only bounds the walk to a group's member.
MAX_GROUP_DEPTH = 16


@attrs.frozen
class DelaySample:
    time: float  # unix time (time.time()) of the probe
    delay: int  # milliseconds; 0 = the probe failed or timed out (mihomo's convention)


class HealthBook:
    """Probe history per outbound tag; one per gateway, kept across reloads."""

    def __init__(self) -> None:
        self._samples: dict[str, deque[DelaySample]] = {}
        # told of every new sample (the hub of worker processes passes them on)
        self.on_change: Callable[[], None] | None = None

    def record(self, tag: str, delay: int | None, when: float | None = None) -> None:
        """``delay`` in ms; None or 0: the probe failed."""
        sample = DelaySample(time.time() if when is None else when, max(0, delay or 0))
        self._samples.setdefault(tag, deque(maxlen=HISTORY)).append(sample)
        if self.on_change is not None:
            self.on_change()

    def export(self) -> dict[str, list[tuple[float, int]]]:
        """Every history as plain data (a worker process gets the hub's)."""
        return {tag: [(s.time, s.delay) for s in samples] for tag, samples in self._samples.items()}

    def replace(self, exported: dict[str, list[tuple[float, int]]]) -> None:
        """Take another book's :meth:`export` as this one's whole history."""
        self._samples = {
            tag: deque((DelaySample(float(t), int(d)) for t, d in samples), maxlen=HISTORY)
            for tag, samples in exported.items()
        }

    def history(self, tag: str) -> list[DelaySample]:
        return list(self._samples.get(tag, ()))

    def last_delay(self, tag: str) -> int | None:
        samples = self._samples.get(tag)
        return samples[-1].delay if samples else None

    def alive(self, tag: str) -> bool:
        return alive(self.last_delay(tag))


@attrs.frozen
class ProbeTarget:
    """A probe URL taken apart once."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> ProbeTarget:
        """Raises ValueError for anything but an http:// or https:// URL with a host."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"probe url must be http:// or https://: {url!r}")
        if not parts.hostname:
            raise ValueError(f"probe url has no host: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)  # ValueError if bad
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port, path)

    def request(self) -> bytes:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        authority = host if self.port == default else f"{host}:{self.port}"
        head = f"GET {self.path} HTTP/1.1\r\nHost: {authority}\r\n"
        return (head + "User-Agent: trio-tproxy\r\nConnection: close\r\n\r\n").encode()


async def probe_delay(
    outbound: object,
    url: str,
    timeout: float,  # noqa: ASYNC109
    *,
    resolver: Resolver | None = None,
) -> int:
    """One GET for ``url`` through ``outbound`` within ``timeout``; the delay in ms.

    Raises TimeoutError on timeout, OSError (DialError) when the outbound fails or the
    answer is not 2xx/3xx. ``resolver``: looks the URL's host up when ``outbound``
    dials from this host itself (direct); a proxy gets the name as it is.
    """
    try:
        target = ProbeTarget.parse(url)
    except ValueError as exc:
        raise DialError(errno.EINVAL, str(exc)) from exc
    opener = stream_capable(outbound)
    if opener is None:
        raise DialError(errno.EOPNOTSUPP, f"outbound {getattr(outbound, 'tag', '?')!r} "
                        "does not carry TCP")  # fmt: skip
    started = trio.current_time()
    with trio.move_on_after(timeout) as scope:
        destination = await _destination(outbound, target, resolver)
        await _exchange(opener, destination, target, timeout)
    if scope.cancelled_caught:
        raise TimeoutError(f"probe {url} got no answer within {timeout:g}s")
    return max(1, round((trio.current_time() - started) * 1000))


async def _destination(
    outbound: object, target: ProbeTarget, resolver: Resolver | None
) -> Destination:
    ip = ip_literal(target.host)
    if ip is not None:
        return Destination((ip, target.port))
    if resolver is not None and _sends_directly(outbound):
        ips = await resolver.resolve(target.host)
        if not ips:
            raise DialError(errno.EHOSTUNREACH, f"cannot resolve {target.host!r}")
        return Destination((ips[0], target.port), target.host)
    return Destination((_UNSPECIFIED, target.port), target.host)


def _sends_directly(outbound: object) -> bool:
    """Whether ``outbound`` (through groups, to the member they use now) dials from this
    host: then it needs the URL's address; a proxy resolves the name itself."""
    for _ in range(MAX_GROUP_DEPTH):
        if getattr(outbound, "direct_mark", None) is not None:
            return True
        current, members = getattr(outbound, "current", None), getattr(outbound, "outbounds", None)
        if current is None or not isinstance(members, Mapping):
            return False
        outbound = members.get(current())
    return False


async def _exchange(
    opener: Any,
    destination: Destination,
    target: ProbeTarget,
    timeout: float,  # noqa: ASYNC109
) -> None:
    plain = target.scheme == "http"
    initial = target.request() if plain else b""
    try:
        upstream: Upstream = await opener.open_stream(destination, timeout=timeout,
                                                      initial=initial)  # fmt: skip
    except FlowRefused as refused:
        raise DialError(errno.ECONNREFUSED, f"refused: {refused.outcome}") from None
    stream = _as_trio_stream(upstream)
    try:
        if not plain:
            stream = trio.SSLStream(stream, ssl.create_default_context(),
                                    server_hostname=target.host)  # fmt: skip
            await stream.send_all(target.request())
        status = await _read_status(stream)
    except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as exc:
        raise DialError(errno.ECONNRESET, f"probe connection broke: {exc}") from exc
    finally:
        _close(upstream)
    if not 200 <= status < 400:
        raise DialError(errno.EPROTO, f"probe answered HTTP {status}")


async def _read_status(stream: trio.abc.ReceiveStream) -> int:
    head = b""
    while b"\r\n" not in head:
        if len(head) > MAX_RESPONSE_HEAD:
            raise DialError(errno.EPROTO, "probe answer has no HTTP status line")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise DialError(errno.ECONNRESET, "probe connection closed before an answer")
        head += chunk
    line = head.split(b"\r\n", 1)[0].split()
    if len(line) < 2 or not line[0].startswith(b"HTTP/1.") or not line[1].isdigit():
        raise DialError(errno.EPROTO, f"probe answer is not HTTP: {head[:40]!r}")
    return int(line[1])


def _as_trio_stream(upstream: Upstream) -> trio.abc.Stream:
    if isinstance(upstream, SocketUpstream):
        stream: trio.abc.Stream = trio.SocketStream(trio.socket.from_stdlib_socket(upstream.sock))
        return _Prefixed(stream, upstream.early) if upstream.early else stream
    if isinstance(upstream, StreamUpstream):
        return _ByteStreamAdapter(upstream.stream)
    assert isinstance(upstream, LocalAnswer)
    raise DialError(errno.EOPNOTSUPP, "a local answerer cannot be probed")


def _close(upstream: Upstream) -> None:
    if isinstance(upstream, SocketUpstream):
        close_socket(upstream.sock)
    elif isinstance(upstream, StreamUpstream):
        upstream.stream.close()


class _Prefixed(trio.abc.Stream):
    """A stream that first yields bytes already received (an upstream's ``early``)."""

    def __init__(self, inner: trio.abc.Stream, early: bytes) -> None:
        self.inner, self.early = inner, early

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.early:
            data, self.early = self.early, b""
            await trio.lowlevel.checkpoint()
            return data
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


class _ByteStreamAdapter(trio.abc.Stream):
    """An outbound's :class:`ByteStream` (a cipher, TLS) as a trio stream, for SSLStream."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data: bytes | bytearray | memoryview = await self.inner.receive_some(max_bytes or 65536)
        return bytes(data) if isinstance(data, memoryview) else data  # valid until the next call

    async def aclose(self) -> None:
        self.inner.close()
        await trio.lowlevel.checkpoint()
