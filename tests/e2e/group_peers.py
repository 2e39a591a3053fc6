"""Peers for the group tests, run inside a lab namespace (``python3 group_peers.py MODE``).

- ``delay``: a TCP forwarder in front of an upstream proxy that holds every chunk going
  upstream for the number of milliseconds written in ``--delay-file`` (read per chunk,
  so a test slows a member down by rewriting the file; the kernel here has no netem).
- ``probe``: an HTTP/1.1 server answering every GET with ``204 No Content`` (the probe
  URL, as http://cp.cloudflare.com/generate_204 does).
- ``trickle``: a client that sends ``--count`` chunks to an echo server ``--gap``
  seconds apart and checks every echo; one long flow that must survive a group switch.

Servers print "listening" once bound and live ``--lifetime`` seconds at most; every
loop is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CHUNK = 65536
MAX_CONNECTIONS = 500


def read_delay(path: Path) -> float:
    try:
        return float(path.read_text().strip() or 0) / 1000
    except (OSError, ValueError):
        return 0.0


def pump(src: socket.socket, dst: socket.socket, delay_file: Path | None) -> None:
    try:
        while chunk := src.recv(CHUNK):
            if delay_file is not None:
                time.sleep(read_delay(delay_file))
            dst.sendall(chunk)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)


def serve_delay(host: str, port: int, to: str, delay_file: Path, lifetime: float) -> None:
    to_host, _, to_port = to.rpartition(":")
    srv = socket.create_server((host, port), reuse_port=False)
    srv.settimeout(0.5)
    print("listening", flush=True)
    deadline = time.monotonic() + lifetime
    accepted = 0
    while time.monotonic() < deadline and accepted < MAX_CONNECTIONS:
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        accepted += 1
        try:
            upstream = socket.create_connection((to_host, int(to_port)), timeout=5)
        except OSError:
            conn.close()
            continue
        upstream.settimeout(None)
        conn.settimeout(None)
        for args in ((conn, upstream, delay_file), (upstream, conn, None)):
            threading.Thread(target=pump, args=args, daemon=True).start()


class NoContent(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_probe(host: str, port: int, lifetime: float) -> None:
    server = ThreadingHTTPServer((host, port), NoContent)
    server.daemon_threads = True
    threading.Timer(lifetime, server.shutdown).start()
    print("listening", flush=True)
    server.serve_forever(poll_interval=0.2)


def client_trickle(
    host: str, port: int, count: int, gap: float, timeout: float
) -> dict[str, object]:
    ok = 0
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        print(json.dumps({"connected": True}), flush=True)
        for i in range(count):
            data = f"chunk {i:04d} ".encode() * 64
            sock.sendall(data)
            got = b""
            while len(got) < len(data):
                part = sock.recv(CHUNK)
                if not part:
                    break
                got += part
            ok += got == data
            time.sleep(gap)
        sock.shutdown(socket.SHUT_WR)
        tail = sock.recv(CHUNK)
    return {"sent": count, "intact": ok, "clean_eof": tail == b"",
            "seconds": round(time.monotonic() - start, 3)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("delay", "probe", "trickle"))
    p.add_argument("--host", default="")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--to", default="")
    p.add_argument("--delay-file", type=Path)
    p.add_argument("--lifetime", type=float, default=120.0)
    p.add_argument("--count", type=int, default=20)
    p.add_argument("--gap", type=float, default=0.2)
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args()
    if a.mode == "delay":
        serve_delay(a.host, a.port, a.to, a.delay_file, a.lifetime)
    elif a.mode == "probe":
        serve_probe(a.host, a.port, a.lifetime)
    else:
        print(json.dumps(client_trickle(a.host, a.port, a.count, a.gap, a.timeout)), flush=True)


if __name__ == "__main__":
    sys.exit(main())
