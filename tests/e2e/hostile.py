"""Hostile input for the gateway, run in the client namespace (``python3 hostile.py ...``).

Stdlib only. Every loop is bounded by a count and every socket by a timeout; prints one
JSON line with what it sent. Seeded: a failure can be replayed.

* TCP: ``--tcp`` connections to the given ports, round robin over four kinds: random
  bytes then close; a truncated or bit-flipped real TLS ClientHello (the sniff fixtures);
  an immediate RST (SO_LINGER 0) after connecting; and half-open ones, which send a few
  bytes, shut their side down and are held silent until the end of the TCP phase.
* UDP: ``--udp`` random datagrams from 100 source ports to random destination ports,
  then mutated real QUIC Initials to port 443.
* DNS: ``--dns`` garbage, truncated and bit-flipped queries to port 53 over UDP, and one
  tenth as many over TCP (some length-prefixed, some not).
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

FIXTURES = Path(__file__).resolve().parents[1] / "sniff" / "fixtures"
TLS = ["tls_curl", "tls_chrome_pq", "tls_firefox_pq", "tls_openssl_fragmented"]
QUIC = ["quic_chrome-0", "quic_aioquic_v1-0", "quic_aioquic_v2-0", "quic_draft29-0"]
HALF_OPEN_HELD = 300  # at most this many half-open connections held at once


def load(name: str) -> bytes:
    return (FIXTURES / f"{name}.bin").read_bytes()


def mutate(rng: random.Random, data: bytes) -> bytes:
    """Truncated, bit-flipped, or both."""
    out = bytearray(data)
    if rng.random() < 0.6:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    if rng.random() < 0.6:
        del out[rng.randint(1, len(out)) :]
    return bytes(out)


class Tally:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = {}

    def add(self, key: str) -> None:
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1


def tcp_one(host: str, port: int, kind: int, seed: int, *, tally: Tally,
            held: list[socket.socket]) -> None:  # fmt: skip
    rng = random.Random(seed)
    try:
        sock = socket.create_connection((host, port), timeout=3)
    except OSError:
        tally.add("tcp connect failed")
        return
    try:
        sock.settimeout(2)
        if kind == 0:
            sock.sendall(rng.randbytes(rng.randint(1, 1500)))
        elif kind == 1:
            sock.sendall(mutate(rng, load(rng.choice(TLS))))
        elif kind == 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        else:
            sock.sendall(b"\x16\x03\x01"[: rng.randint(0, 3)])
            sock.shutdown(socket.SHUT_WR)
            with tally.lock:
                if len(held) < HALF_OPEN_HELD:
                    held.append(sock)
                    tally.counts["tcp half-open"] = tally.counts.get("tcp half-open", 0) + 1
                    return
        tally.add(f"tcp kind {kind}")
    except OSError:
        tally.add("tcp send failed")
    sock.close()


def tcp_phase(host: str, ports: list[int], count: int, seed: int, tally: Tally) -> None:
    held: list[socket.socket] = []
    with ThreadPoolExecutor(max_workers=48) as pool:
        for i in range(count):
            pool.submit(tcp_one, host, ports[i % len(ports)], i % 4, seed + i, tally=tally,
                        held=held)  # fmt: skip
    for sock in held:  # the half-open ones vanish abruptly at the end
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()


def udp_phase(host: str, count: int, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    sources = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(100)]
    quic = [load(name) for name in QUIC]
    try:
        for i in range(count):
            sock = sources[i % len(sources)]
            if i % 5 == 4:
                payload, port = mutate(rng, rng.choice(quic)), 443
            else:
                payload, port = rng.randbytes(rng.randint(0, 1400)), rng.randint(1, 65535)
            try:
                sock.sendto(payload, (host, port))
                tally.add("udp sent")
            except OSError:
                tally.add("udp send failed")
            if i % 200 == 199:
                time.sleep(0.02)  # bursts, not a flood: this is about input, not load
    finally:
        for sock in sources:
            sock.close()


def dns_phase(host: str, count: int, seed: int, tally: Tally) -> None:
    rng = random.Random(seed)
    query = load("dns_dig")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(count):
            kind = i % 3
            payload = rng.randbytes(rng.randint(0, 600)) if kind == 0 else mutate(rng, query)
            try:
                sock.sendto(payload, (host, 53))
                tally.add("dns udp sent")
            except OSError:
                tally.add("dns udp send failed")
            if i % 100 == 99:
                time.sleep(0.02)
    for i in range(count // 10):
        payload = mutate(rng, query) if i % 2 else rng.randbytes(rng.randint(1, 300))
        if i % 3 == 0:
            payload = struct.pack("!H", rng.choice((len(payload), 65535, 0))) + payload
        try:
            with socket.create_connection((host, 53), timeout=3) as conn:
                conn.sendall(payload)
            tally.add("dns tcp sent")
        except OSError:
            tally.add("dns tcp failed")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--ports", default="9000")
    p.add_argument("--tcp", type=int, default=2000)
    p.add_argument("--udp", type=int, default=3000)
    p.add_argument("--dns", type=int, default=600)
    p.add_argument("--seed", type=int, default=13)
    a = p.parse_args()
    tally = Tally()
    start = time.monotonic()
    tcp_phase(a.host, [int(x) for x in a.ports.split(",")], a.tcp, a.seed, tally)
    udp_phase(a.host, a.udp, a.seed, tally)
    dns_phase(a.host, a.dns, a.seed, tally)
    tally.counts["seconds"] = round(time.monotonic() - start, 1)  # type: ignore[assignment]
    print(json.dumps(tally.counts, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
