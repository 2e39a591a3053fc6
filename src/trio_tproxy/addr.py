"""Addresses every part shares: the bottom layer, pure (no socket, no trio).

It imports nothing of ours, so anything may import it, the pure core included; the
socket helpers that go with it are in :mod:`.sock`. Two spellings of an address
exist on purpose: a :data:`SockAddr` (an ``ipaddress`` object and a port) is what the
TCP path and routing reason about; an :data:`Endpoint` (text and port) is what the UDP
path passes to the kernel millions of times, where parsing into objects would cost.
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address

IPAddress = IPv4Address | IPv6Address
SockAddr = tuple[IPAddress, int]
# A UDP address as the socket module spells it: ("203.0.113.5", 443) or ("2001:db8::1", 53).
Endpoint = tuple[str, int]


def unmap(ip: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` (what a dual-stack socket reports for IPv4) -> ``a.b.c.d``."""
    if type(ip) is IPv6Address and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def show(addr: SockAddr | Endpoint) -> str:
    """``1.2.3.4:80`` or ``[2001:db8::1]:80``, for logs."""
    host, port = addr
    text = str(host)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"
