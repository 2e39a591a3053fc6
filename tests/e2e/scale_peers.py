"""Many idle TCP connections, for the scale test (``python3 scale_peers.py MODE ...``).

Stdlib only, bounded by counts and timeouts; both raise their open-file limit to the
hard limit first.

serve   accept and hold up to --count connections (never read or written); prints
        "listening" once bound.
hold    open --count connections to --host:--port in batches, print {"holding": N}
        (or {"failed": ...}), hold them until stdin closes or --timeout passes, then
        close them all and print {"closed": N}.
"""

from __future__ import annotations

import argparse
import json
import resource
import select
import socket
import sys
import time


def raise_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(port: int, count: int, timeout: float) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(4096)
    srv.settimeout(1.0)
    print("listening", flush=True)
    held = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(held) < count:
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            continue
        held.append(conn)
    time.sleep(max(0.0, deadline - time.monotonic()))


def hold(host: str, port: int, count: int, timeout: float, batch: int = 250) -> None:
    socks: list[socket.socket] = []
    start = time.monotonic()
    try:
        for i in range(count):
            socks.append(socket.create_connection((host, port), timeout=10))
            if i % batch == batch - 1:
                time.sleep(0.05)  # let the gateway's accept loop keep up with the queue
    except OSError as exc:
        print(json.dumps({"failed": f"after {len(socks)}: {exc}"}), flush=True)
    else:
        print(json.dumps({"holding": len(socks), "seconds": round(time.monotonic() - start, 1)}),
              flush=True)  # fmt: skip
    select.select([sys.stdin], [], [], timeout)
    for sock in socks:
        sock.close()
    print(json.dumps({"closed": len(socks)}), flush=True)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["serve", "hold"])
    p.add_argument("--host", default="")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=120.0)
    a = p.parse_args()
    raise_limit()
    if a.mode == "serve":
        serve(a.port, a.count, a.timeout)
    else:
        hold(a.host, a.port, a.count, a.timeout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
