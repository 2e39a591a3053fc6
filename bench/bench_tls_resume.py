"""A Trojan-style TLS client's CPU per connection: full handshakes, and resumed ones
with the session handed over through CPython's copies or as OpenSSL's duplicate (not
collected by pytest; no root needed: loopback only).

    python bench/bench_tls_resume.py [--connections 400] [--runs 3]

The server is ``openssl s_server`` (TLS 1.3, session tickets, an ECDSA P-256
certificate made for the run) in its own process, so the client's figure is its own:
the CPU time of this process (user + system: the TLS handshake, the connect, the
request and reading the answer) per connection, for

* ``full``: no session offered (the certificate is decoded and verified every time);
* ``copied``: tls_client.SessionCache without tls_native, so the session goes through
  ``wrap_socket(session=...)``, which CPython copies through DER (i2d, then d2i: the
  server's certificate decoded again) for each connection;
* ``duplicate``: SessionCache with tls_native (what the trojan outbound uses): each
  connection is offered a duplicate made by OpenSSL (SSL_SESSION_dup), no DER.

Medians of ``--runs`` runs, the three interleaved.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from netlab.servers import make_certificate
from trio_tproxy.outbound.tls_client import SessionCache
from trio_tproxy.outbound.tls_native import native_sessions

NAME = "bench.trio-tproxy.test"


def start_server(root: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    cert = make_certificate(root, (NAME,))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(cert.path),
         "-key", str(cert.key), "-www", "-quiet", "-tls1_3"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(100):  # bounded: 5 s
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.05)
        else:
            return server, port, cert.path
    server.kill()
    raise RuntimeError("openssl s_server did not start")


def connect(port: int, context: ssl.SSLContext, cache: SessionCache | None) -> bool:
    """One connection: handshake, a request, the whole answer; whether it resumed."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    offered = None
    if cache is None:
        sock = context.wrap_socket(raw, server_hostname=NAME)
    else:
        sock, offered = cache.wrap(context, raw, NAME)
        sock.do_handshake()
    try:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        first = sock.recv(65536)
        if cache is not None:
            cache.keep(sock, offered=offered)
        while first and sock.recv(65536):
            pass
        return sock.session_reused
    finally:
        sock.close()


def measure(port: int, context: ssl.SSLContext, cache: SessionCache | None, n: int
            ) -> tuple[float, int]:  # fmt: skip
    connect(port, context, cache)  # the first: a full handshake that gives the session
    start = time.process_time()
    resumed = sum(connect(port, context, cache) for _ in range(n))
    return (time.process_time() - start) / n * 1e6, resumed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if not shutil.which("openssl"):
        print("cannot run: missing openssl")
        return 1
    native = native_sessions()
    if native is None:
        print("tls_native is not available here (see its module doc): nothing to compare")
        return 1
    with tempfile.TemporaryDirectory() as root:
        server, port, cert = start_server(Path(root))
        try:
            context = ssl.create_default_context(cafile=str(cert))
            kinds = {"full": lambda: None, "copied": lambda: SessionCache(None),
                     "duplicate": lambda: SessionCache(native)}  # fmt: skip
            cpu: dict[str, list[float]] = {kind: [] for kind in kinds}
            for run in range(args.runs):
                for kind, cache in kinds.items():
                    us, resumed = measure(port, context, cache(), args.connections)
                    cpu[kind].append(us)
                    print(f"run {run + 1}: {kind:12} {us:6.0f} us/connection, "
                          f"{resumed}/{args.connections} resumed", flush=True)  # fmt: skip
        finally:
            server.terminate()
            server.wait(5)
    print(f"\nclient CPU per connection, median of {args.runs} runs "
          f"({ssl.OPENSSL_VERSION}, Python {sys.version.split()[0]}):")  # fmt: skip
    full = statistics.median(cpu["full"])
    for kind, values in cpu.items():
        us = statistics.median(values)
        print(f"  {kind:12} {us:6.0f} us   {us / full:.2f} of a full handshake")
    return 0


if __name__ == "__main__":
    sys.exit(main())
