"""A client for the controller API tests, run inside the lab's client namespace; stdlib only.

download HOST PORT NAME: send an HTTP request for NAME (so the gateway sniffs the host),
say {"holding": 1}, then read until the connection ends or --timeout passes; the result
says how it ended ("eof", "reset", "timeout"), after how long, and how many bytes came.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time


def download(host: str, port: int, name: str, timeout: float) -> dict[str, object]:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(f"GET /big HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
        received = len(sock.recv(65536))
        print(json.dumps({"holding": 1}), flush=True)
        start = time.monotonic()
        ended = "timeout"
        while time.monotonic() - start < timeout:
            try:
                chunk = sock.recv(1 << 20)
            except ConnectionResetError:
                ended = "reset"
                break
            except TimeoutError:
                break
            if not chunk:
                ended = "eof"
                break
            received += len(chunk)
        return {"ended": ended, "seconds": time.monotonic() - start, "received": received}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["download"])
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="dl.example.test")
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args()
    print(json.dumps(download(a.host, a.port, a.name, a.timeout)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
