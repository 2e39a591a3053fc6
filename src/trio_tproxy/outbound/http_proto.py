"""HTTP CONNECT (RFC 9110 §9.3.6) as the ``http`` outbound speaks it, sans-IO.

Every TCP flow becomes ``CONNECT host:port HTTP/1.1``, as v2ray's http outbound does
(reference §4), with ``Proxy-Authorization: Basic`` when credentials are configured.
:func:`parse_connect_response` follows the h11 reader contract: ``(response, bytes
consumed)``, ``None`` for a valid prefix that needs more, :class:`HttpProxyError` for
anything that is not an HTTP/1.x response head within :data:`MAX_RESPONSE_HEAD`.
"""

from __future__ import annotations

import base64
import ipaddress
import re

import attrs

from .socks_proto import Host

# A CONNECT response is a status line and a few headers (a 407 may carry a short body,
# which we never read). 16 KiB is far beyond any real proxy's head and keeps a hostile
# or confused peer from making us buffer without bound.
MAX_RESPONSE_HEAD = 16 * 1024

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([0-9]{3})(?: ([^\r\n]*))?\r?")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_PREFIX = b"HTTP/1."


class HttpProxyError(ValueError):
    """The peer's answer is not an HTTP/1.x response head; ``str()`` says why."""


@attrs.frozen
class ConnectResponse:
    status: int
    reason: str

    @property
    def opens_tunnel(self) -> bool:
        # RFC 9110 §9.3.6: any 2xx means the tunnel is established.
        return 200 <= self.status < 300


def authority(host: Host, port: int) -> str:
    if isinstance(host, ipaddress.IPv6Address):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def check_credentials(username: str, password: str) -> None:
    """RFC 7617 §2: the user-id of Basic cannot contain a colon."""
    if ":" in username:
        raise ValueError("an HTTP proxy username cannot contain ':' (RFC 7617)")
    del password  # any password is representable


def encode_connect(host: Host, port: int, credentials: tuple[str, str] | None = None) -> bytes:
    target = authority(host, port)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if credentials is not None:
        username, password = credentials
        check_credentials(username, password)
        token = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    lines.append("Proxy-Connection: Keep-Alive")  # what v2ray sends (setUpHTTPTunnel)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def parse_connect_response(buf: bytes) -> tuple[ConnectResponse, int] | None:
    # Judge the first bytes at once: a peer that is not an HTTP proxy fails fast.
    head = buf[: len(_PREFIX)]
    if head != _PREFIX[: len(head)]:
        raise HttpProxyError(f"not an HTTP response (starts with {bytes(head)!r})")
    end = _HEAD_END.search(buf, 0, MAX_RESPONSE_HEAD + 4)
    if end is None:
        if len(buf) > MAX_RESPONSE_HEAD:
            raise HttpProxyError(f"response head longer than {MAX_RESPONSE_HEAD} bytes")
        return None
    status_line = buf[: buf.index(b"\n")]
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise HttpProxyError(f"bad status line {status_line[:80]!r}")
    reason = (match.group(2) or b"").decode("latin-1").strip()
    return ConnectResponse(int(match.group(1)), reason), end.end()
