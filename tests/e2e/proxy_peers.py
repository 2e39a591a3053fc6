"""A peer for the proxy tests, run inside a lab namespace (``python3 proxy_peers.py``):
it accepts TCP connections and never says a word (a proxy that hangs). Prints
"listening" once bound; lives ``--lifetime`` seconds at most and holds at most
MAX_HELD connections."""

from __future__ import annotations

import argparse
import socket
import sys
import time

MAX_HELD = 1000


def serve_silent(port: int, lifetime: float) -> None:
    srv = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind(("::", port))
    srv.listen(64)
    srv.settimeout(1.0)
    print("listening", flush=True)
    held = []
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline and len(held) < MAX_HELD:
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        held.append(conn)  # never read, never written, never closed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=1998)
    p.add_argument("--lifetime", type=float, default=600.0)
    a = p.parse_args()
    serve_silent(a.port, a.lifetime)


if __name__ == "__main__":
    sys.exit(main())
