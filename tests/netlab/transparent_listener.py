"""A tiny transparent listener, run inside the gateway namespace by the netlab tests.

    python3 transparent_listener.py {tcp-tproxy|tcp-redirect|udp-tproxy} PORT COUNT

One dual-stack [::]:PORT socket.  For each of COUNT flows it answers the client with
a JSON object saying where the flow was *really* going, as the kernel reports it:

- tcp-tproxy:   getsockname() of the accepted socket (TPROXY keeps the original dst)
- tcp-redirect: SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST (REDIRECT rewrote the dst)
- udp-tproxy:   the IP_ORIGDSTADDR / IPV6_ORIGDSTADDR control message; the reply is
                sent from a second transparent socket bound to that original dst, so
                the client (a connected UDP socket) only accepts it if spoofing works.

TCP answers are HTTP/1.0 so curl can be the client.  Stdlib only; exits after COUNT
flows or 10 s without one.
"""

from __future__ import annotations

import json
import socket
import struct
import sys

IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
IP_RECVORIGDSTADDR = 20  # the cmsg type is the same number (IP_ORIGDSTADDR)
IPV6_RECVORIGDSTADDR = 74
SO_ORIGINAL_DST = 80  # SOL_IP; IP6T_SO_ORIGINAL_DST is also 80, on SOL_IPV6
# Python has no socket.SOL_IPV6: the level is IPPROTO_IPV6 (41).
IDLE_TIMEOUT = 10.0
MAX_REQUEST = 65536


def make_socket(kind: int, port: int, transparent: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    if transparent:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
    sock.bind(("::", port))
    sock.settimeout(IDLE_TIMEOUT)
    return sock


def is_mapped_v4(address: str) -> bool:
    return address.startswith("::ffff:") and "." in address


def redirect_original_dst(conn: socket.socket) -> tuple[str, int]:
    if is_mapped_v4(conn.getpeername()[0]):
        raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)  # struct sockaddr_in
        port, packed = struct.unpack_from("!2xH4s", raw)
        return socket.inet_ntop(socket.AF_INET, packed), port
    raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)  # struct sockaddr_in6
    port, packed = struct.unpack_from("!2xH4x16s", raw)
    return socket.inet_ntop(socket.AF_INET6, packed), port


def serve_tcp(port: int, count: int, mode: str) -> None:
    listener = make_socket(socket.SOCK_STREAM, port, transparent=mode == "tcp-tproxy")
    listener.listen(16)
    for _ in range(count):
        conn, peer = listener.accept()
        with conn:
            conn.settimeout(IDLE_TIMEOUT)
            request = b""
            while b"\r\n\r\n" not in request and len(request) < MAX_REQUEST:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                request += chunk
            flow = {"local": list(conn.getsockname()[:2]), "peer": list(peer[:2])}
            if mode == "tcp-redirect":
                flow["original_dst"] = list(redirect_original_dst(conn))
            body = json.dumps(flow).encode()
            head = f"HTTP/1.0 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            conn.sendall(head + body)
            print(json.dumps(flow), flush=True)


def parse_origdst(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, str, int]:
    for level, kind, data in ancillary:
        if level == socket.SOL_IP and kind == IP_RECVORIGDSTADDR:
            port, packed = struct.unpack_from("!2xH4s", data)
            return socket.AF_INET, socket.inet_ntop(socket.AF_INET, packed), port
        if level == socket.IPPROTO_IPV6 and kind == IPV6_RECVORIGDSTADDR:
            port, packed = struct.unpack_from("!2xH4x16s", data)
            return socket.AF_INET6, socket.inet_ntop(socket.AF_INET6, packed), port
    raise RuntimeError(f"no original destination in {ancillary!r}")


def serve_udp(port: int, count: int) -> None:
    listener = make_socket(socket.SOCK_DGRAM, port, transparent=True)
    listener.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
    listener.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVORIGDSTADDR, 1)
    for _ in range(count):
        _payload, ancillary, _flags, peer = listener.recvmsg(2048, 1024)
        family, dst_addr, dst_port = parse_origdst(ancillary)
        flow = {"original_dst": [dst_addr, dst_port], "peer": list(peer[:2])}
        client = peer[0].removeprefix("::ffff:") if family == socket.AF_INET else peer[0]
        with socket.socket(family, socket.SOCK_DGRAM) as reply:
            level, option = (
                (socket.SOL_IP, IP_TRANSPARENT)
                if family == socket.AF_INET
                else (socket.IPPROTO_IPV6, IPV6_TRANSPARENT)
            )
            reply.setsockopt(level, option, 1)
            reply.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            reply.bind((dst_addr, dst_port))
            reply.sendto(json.dumps(flow).encode(), (client, peer[1]))
        print(json.dumps(flow), flush=True)


def main() -> None:
    mode, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if mode == "udp-tproxy":
        serve_udp(port, count)
    else:
        serve_tcp(port, count, mode)


if __name__ == "__main__":
    main()
