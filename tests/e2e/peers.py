"""Test peers run inside lab namespaces (``python3 peers.py MODE ...``); stdlib only.

Servers print "listening" once bound. Clients print one JSON line with their results.
Every loop here is bounded by a count or a timeout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import socket
import sys
import threading
import time

CHUNK = 65536


def pattern(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def serve(port: int, handler: object, family: int = socket.AF_INET6) -> None:
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", port))
    srv.listen(1024)
    print("listening", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=handler, args=(conn,), daemon=True).start()  # type: ignore[arg-type]


def recv_all(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


def handle_echo(conn: socket.socket) -> None:
    with conn:
        try:
            while data := conn.recv(CHUNK):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def handle_halfclose(conn: socket.socket) -> None:
    """Read the whole request (until the client's FIN), then answer its digest and a body."""
    with conn:
        try:
            request = recv_all(conn)
            time.sleep(0.2)  # the client has half-closed; the answer comes later
            conn.sendall(hashlib.sha256(request).hexdigest().encode() + b"\n")
            conn.sendall(pattern(7, 1_000_000))
        except OSError:
            pass


def handle_source(conn: socket.socket) -> None:
    """Send a deterministic stream forever (until the peer goes away)."""
    with conn:
        block = pattern(3, CHUNK)
        try:
            for _ in range(1_000_000):
                conn.sendall(block)
        except OSError:
            pass


def handle_slow(conn: socket.socket) -> None:
    """Answer 10 small pieces over ~2 s, then close: a flow that needs time to drain."""
    with conn:
        try:
            conn.recv(CHUNK)
            for i in range(10):
                conn.sendall(b"piece %d\n" % i)
                time.sleep(0.2)
        except OSError:
            pass


def handle_banner(conn: socket.socket) -> None:
    with conn:
        try:
            conn.sendall(b"220 banner.test ESMTP ready\r\n")
            conn.recv(CHUNK)
        except OSError:
            pass


def handle_endless(conn: socket.socket) -> None:
    """An HTTP/1.0 response whose body never ends (64 KiB every 10 ms, until the peer goes)."""
    with conn:
        try:
            conn.recv(CHUNK)
            conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\n\r\n")
            block = pattern(3, CHUNK)
            for _ in range(100_000):
                conn.sendall(block)
                time.sleep(0.01)
        except OSError:
            pass


def handle_reset(conn: socket.socket) -> None:
    """Send for ~0.5 s, then reset the connection (SO_LINGER 0): a server dying mid-body."""
    with conn:
        try:
            block = pattern(4, 16384)
            for _ in range(50):
                conn.sendall(block)
                time.sleep(0.01)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass


def handle_finishing(conn: socket.socket) -> None:
    """An HTTP/1.0 response ended by the close: ten 1000-byte pieces over ~0.5 s."""
    with conn:
        try:
            conn.recv(CHUNK)
            conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
            for i in range(10):
                conn.sendall(pattern(i, 1000))
                time.sleep(0.05)
        except OSError:
            pass


HANDLERS = {"echo": handle_echo, "halfclose": handle_halfclose, "source": handle_source,
            "slow": handle_slow, "banner": handle_banner, "endless": handle_endless,
            "finishing": handle_finishing, "reset": handle_reset}  # fmt: skip


def connect(host: str, port: int, timeout: float) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout)


def client_bulk(host: str, port: int, size: int, timeout: float) -> dict[str, object]:
    """Send ``size`` bytes to an echo server while reading them back; compare digests."""
    data = pattern(11, size)
    got = hashlib.sha256()
    received = 0
    with connect(host, port, timeout) as sock:
        def sender() -> None:
            view = memoryview(data)
            for off in range(0, size, 1 << 20):
                sock.sendall(view[off : off + (1 << 20)])
            sock.shutdown(socket.SHUT_WR)

        t = threading.Thread(target=sender, daemon=True)
        t.start()
        while chunk := sock.recv(1 << 20):
            got.update(chunk)
            received += len(chunk)
        t.join(timeout)
    return {"sent": size, "received": received,
            "intact": got.digest() == hashlib.sha256(data).digest()}  # fmt: skip


def client_halfclose(host: str, port: int, timeout: float) -> dict[str, object]:
    request = pattern(5, 200_000)
    with connect(host, port, timeout) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        answer = recv_all(sock)
    digest, _, body = answer.partition(b"\n")
    return {"digest_ok": digest.decode() == hashlib.sha256(request).hexdigest(),
            "body_ok": body == pattern(7, 1_000_000)}  # fmt: skip


def client_connect(host: str, port: int, timeout: float) -> dict[str, object]:
    """How a connection attempt ends, and how fast."""
    start = time.monotonic()
    try:
        with connect(host, port, timeout) as sock:
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
            data = sock.recv(CHUNK)
            result = "eof" if not data else "data"
    except ConnectionResetError:
        result = "reset"
    except ConnectionRefusedError:
        result = "refused"
    except TimeoutError:
        result = "timeout"
    except OSError as exc:
        result = f"error: {exc}"
    return {"result": result, "seconds": time.monotonic() - start}


def client_many(host: str, port: int, count: int, size: int, timeout: float) -> dict[str, object]:
    """``count`` concurrent echo round trips of ``size`` bytes each."""
    ok = 0
    lock = threading.Lock()
    errors: list[str] = []

    def one(i: int) -> None:
        nonlocal ok
        data = pattern(i, size)
        try:
            with connect(host, port, timeout) as sock:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
                back = recv_all(sock)
            with lock:
                if back == data:
                    ok += 1
                else:
                    errors.append(f"{i}: got {len(back)} bytes")
        except OSError as exc:
            with lock:
                errors.append(f"{i}: {exc}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return {"ok": ok, "errors": errors[:5]}


def client_hold(host: str, port: int, count: int, timeout: float) -> dict[str, object]:
    """Open ``count`` downloads from a source server, say so, then read until killed."""
    socks = [connect(host, port, timeout) for _ in range(count)]
    for s in socks:
        s.recv(CHUNK)
    print(json.dumps({"holding": count}), flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for s in socks:
            s.recv(CHUNK)
    return {"held": count}


def client_pingpong(host: str, port: int, seconds: float, timeout: float) -> dict[str, object]:
    """One byte to an echo server every 10 ms for ``seconds``: the worst round trip."""
    rtts: list[float] = []
    with connect(host, port, timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        print(json.dumps({"connected": True}), flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            start = time.monotonic()
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                return {"error": "echo broke", "count": len(rtts)}
            rtts.append(time.monotonic() - start)
            time.sleep(0.01)
    return {"count": len(rtts), "worst": max(rtts), "median": sorted(rtts)[len(rtts) // 2]}


def upload(sock: socket.socket, deadline: float, ended: list[object]) -> None:
    """Send 16 KiB every 10 ms until the connection breaks or the deadline passes; how
    the sending ended ("reset", "broken", "open") and when goes into ``ended``."""
    block = pattern(9, 16384)
    while time.monotonic() < deadline:
        try:
            sock.send(block)
        except BlockingIOError:
            pass
        except ConnectionResetError:
            ended += ["reset", time.monotonic()]
            return
        except OSError:
            ended += ["broken", time.monotonic()]
            return
        time.sleep(0.01)
    ended += ["open", time.monotonic()]


def client_watch(host: str, port: int, count: int, timeout: float, size: int) -> dict[str, object]:
    """Open ``count`` connections (``size`` > 0: each also uploads, e.g. to an echo
    server; else a download), say so, then read each until it ends. Per connection: how
    reading ended ("reset", "eof", or "open" at the timeout) and when (time.monotonic(),
    comparable across processes on one machine), then how uploading ended and when."""
    socks = [connect(host, port, timeout) for _ in range(count)]
    deadline = time.monotonic() + timeout
    uploads: list[list[object]] = [[] for _ in socks]
    senders = []
    for s, ended in zip(socks, uploads, strict=True):
        if size > 0:
            s.sendall(b"start")
        s.recv(CHUNK)
        s.setblocking(False)
        if size > 0:
            senders.append(threading.Thread(target=upload, args=(s, deadline, ended), daemon=True))
            senders[-1].start()
    print(json.dumps({"holding": count}), flush=True)
    ends: dict[int, list[object]] = {}
    while len(ends) < count and time.monotonic() < deadline:
        for i, s in enumerate(socks):
            if i in ends:
                continue
            try:
                if not s.recv(CHUNK):
                    ends[i] = ["eof", time.monotonic()]
            except BlockingIOError:
                continue
            except ConnectionResetError:
                ends[i] = ["reset", time.monotonic()]
        time.sleep(0.001)
    for t in senders:  # the upload's verdict follows the read side's end within 2 s
        t.join(max(0.0, min(2.0, deadline - time.monotonic())))
    for s in socks:
        s.close()
    now = time.monotonic()
    return {"ends": [ends.get(i, ["open", now]) + (uploads[i] or ["open", now])
                     for i in range(count)]}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode")
    p.add_argument("--host", default="")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--size", type=int, default=1_000_000)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--seconds", type=float, default=5.0)
    a = p.parse_args()
    if a.mode.startswith("serve-"):
        serve(a.port, HANDLERS[a.mode.removeprefix("serve-")])
        return
    clients = {
        "bulk": lambda: client_bulk(a.host, a.port, a.size, a.timeout),
        "halfclose": lambda: client_halfclose(a.host, a.port, a.timeout),
        "connect": lambda: client_connect(a.host, a.port, a.timeout),
        "many": lambda: client_many(a.host, a.port, a.count, a.size, a.timeout),
        "hold": lambda: client_hold(a.host, a.port, a.count, a.timeout),
        "watch": lambda: client_watch(a.host, a.port, a.count, a.timeout, a.size),
        "pingpong": lambda: client_pingpong(a.host, a.port, a.seconds, a.timeout),
    }
    print(json.dumps(clients[a.mode]()), flush=True)


if __name__ == "__main__":
    sys.exit(main())
