"""UDP test peers run inside lab namespaces (``python3 udp_peers.py MODE ...``); stdlib only.

The server prints "listening" once bound; clients print JSON lines (the last one is the
result). Every loop is bounded by a count or a deadline.

serve   one socket per --bind address (a wildcard socket would answer from the route's
        source address, not from the address the client asked for). Per datagram:
        ``?whoami`` -> JSON {"seen": [host, port]} (the address the server saw);
        ``?stream N MS`` -> N datagrams ``s<i>``, one every MS milliseconds;
        anything else (including an empty datagram) is echoed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import socket
import sys
import threading
import time

MAX_DATAGRAM = 65535


def family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def plain(addr: tuple[object, ...]) -> list[object]:
    host = str(addr[0]).removeprefix("::ffff:")
    return [host, addr[1]]


def udp_socket(host: str, port: int = 0) -> socket.socket:
    sock = socket.socket(family(host), socket.SOCK_DGRAM)
    if family(host) == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    return sock


def serve(binds: list[str], port: int) -> None:
    socks = [udp_socket(host, port) for host in binds]
    print("listening", flush=True)
    while True:
        readable, _, _ = select.select(socks, [], [])
        for sock in readable:
            data, peer = sock.recvfrom(MAX_DATAGRAM)
            if data == b"?whoami":
                sock.sendto(json.dumps({"seen": plain(peer)}).encode(), peer)
            elif data.startswith(b"?stream "):
                count, interval = (int(x) for x in data.split()[1:3])
                threading.Thread(target=stream, args=(sock, peer, count, interval / 1000),
                                 daemon=True).start()  # fmt: skip
            else:
                sock.sendto(data, peer)


def stream(sock: socket.socket, peer: tuple[object, ...], count: int, interval: float) -> None:
    for i in range(min(count, 10_000)):
        sock.sendto(b"s%d" % i, peer)
        time.sleep(interval)


def send(src: str, sport: int, host: str, port: int, payload: str) -> dict[str, object]:
    with udp_socket(src, sport) as sock:
        sock.sendto(payload.encode(), (host, port))
    return {"sent": True}


def round_trip(sock: socket.socket, data: bytes, tries: int, timeout: float) -> tuple[bytes, object] | None:
    for _ in range(tries):
        sock.send(data)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                got, peer = sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                break
            if got == data:
                return got, peer
    return None


def client_echo(host: str, port: int, count: int, size: int, *, tries: int,
                timeout: float) -> dict[str, object]:  # fmt: skip
    """``count`` round trips on one *connected* socket: only replies from host:port count."""
    ok, intact = 0, True
    sources: set[tuple[object, ...]] = set()
    with socket.socket(family(host), socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        for i in range(count):
            data = random.Random(i).randbytes(size) if size else b""
            answer = round_trip(sock, data, tries, timeout)
            if answer is None:
                continue
            ok += 1
            intact = intact and answer[0] == data
            sources.add(tuple(plain(answer[1])))  # type: ignore[arg-type]
    return {"ok": ok, "intact": intact, "sources": sorted(list(s) for s in sources)}


def whoami(sock: socket.socket, host: str, port: int, timeout: float) -> list[object] | None:
    for _ in range(3):
        sock.sendto(b"?whoami", (host, port))
        sock.settimeout(timeout)
        try:
            data, _ = sock.recvfrom(MAX_DATAGRAM)
        except TimeoutError:
            continue
        seen: list[object] = json.loads(data)["seen"]
        return seen
    return None


def client_cone(host: str, port: int, timeout: float) -> dict[str, object]:
    """Ask A (host:port) for our mapped address, print it, then wait for anyone's datagram."""
    with socket.socket(family(host), socket.SOCK_DGRAM) as sock:
        print(json.dumps({"mapped": whoami(sock, host, port, timeout)}), flush=True)
        sock.settimeout(timeout)
        try:
            data, peer = sock.recvfrom(MAX_DATAGRAM)
        except TimeoutError:
            return {"from": None}
        return {"from": plain(peer), "payload": data.decode(errors="replace")}


def client_stream(host: str, port: int, count: int, interval: int, timeout: float) -> dict[str, object]:
    """Ask for ``count`` datagrams ``interval`` ms apart; report how many came, from where."""
    got = 0
    sources: set[tuple[object, ...]] = set()
    with socket.socket(family(host), socket.SOCK_DGRAM) as sock:
        sock.connect((host, port))
        sock.send(b"?stream %d %d" % (count, interval))
        deadline = time.monotonic() + timeout
        while got < count and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                _, peer = sock.recvfrom(MAX_DATAGRAM)
            except TimeoutError:
                break
            got += 1
            sources.add(tuple(plain(peer)))  # type: ignore[arg-type]
    return {"got": got, "sources": sorted(list(s) for s in sources)}


def client_sources(host: str, port: int, count: int, batch: int, *, timeout: float,
                   first_port: int) -> dict[str, object]:  # fmt: skip
    """One datagram from each of ``count`` source ports, ``first_port`` onwards (bound
    explicitly: ephemeral ports would be reused across batches), ``batch`` sockets at a
    time (the fd limit); count the answers that came back."""
    answered = 0
    for start in range(0, count, batch):
        ports = range(first_port + start, first_port + min(start + batch, count))
        socks = [udp_socket("::" if family(host) == socket.AF_INET6 else "0.0.0.0", p)
                 for p in ports]  # fmt: skip
        try:
            waiting = {s.fileno(): s for s in socks}
            for _attempt in range(3):
                for s in waiting.values():
                    s.sendto(b"hello %d" % s.fileno(), (host, port))
                deadline = time.monotonic() + timeout / 3
                poller = select.poll()
                for fd in waiting:
                    poller.register(fd, select.POLLIN)
                while waiting and (left := deadline - time.monotonic()) > 0:
                    for fd, _ in poller.poll(left * 1000):
                        s = waiting.pop(fd)
                        poller.unregister(fd)
                        s.recvfrom(MAX_DATAGRAM)
                        answered += 1
                if not waiting:
                    break
        finally:
            for s in socks:
                s.close()
    return {"answered": answered}


def client_flood(host: str, port: int, seconds: float, ports: int) -> dict[str, object]:
    """Tiny datagrams as fast as this process can send them, from ``ports`` sources."""
    socks = [socket.socket(family(host), socket.SOCK_DGRAM) for _ in range(ports)]
    sent = 0
    deadline = time.monotonic() + seconds
    payload = b"x"
    while time.monotonic() < deadline:
        for s in socks:
            for _ in range(100):
                try:
                    s.sendto(payload, (host, port))
                    sent += 1
                except OSError:
                    pass
    for s in socks:
        s.close()
    return {"sent": sent}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    p.add_argument("--host", default="")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--bind", action="append", default=[])
    p.add_argument("--src", default="")
    p.add_argument("--sport", type=int, default=0)
    p.add_argument("--payload", default="")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--tries", type=int, default=3)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--first-port", type=int, default=20000)
    p.add_argument("--ports", type=int, default=1)
    p.add_argument("--interval", type=int, default=100)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--timeout", type=float, default=2.0)
    a = p.parse_args()
    if a.mode == "serve":
        serve(a.bind, a.port)
        return
    clients = {
        "send": lambda: send(a.src, a.sport, a.host, a.port, a.payload),
        "echo": lambda: client_echo(a.host, a.port, a.count, a.size, tries=a.tries,
                                     timeout=a.timeout),
        "cone": lambda: client_cone(a.host, a.port, a.timeout),
        "stream": lambda: client_stream(a.host, a.port, a.count, a.interval, a.timeout),
        "sources": lambda: client_sources(a.host, a.port, a.count, a.batch, timeout=a.timeout,
                                          first_port=a.first_port),
        "flood": lambda: client_flood(a.host, a.port, a.seconds, a.ports),
    }
    print(json.dumps(clients[a.mode]()), flush=True)
    os._exit(0)  # stream threads of a server never get here; clients need no cleanup


if __name__ == "__main__":
    sys.exit(main())
