"""A small authoritative DNS server for tests: UDP and TCP, threads, stdlib + dnslib.

Answers A/AAAA/TXT from a zone (name -> list of record texts), counts the questions it
gets, and can misbehave on purpose: truncate every UDP answer (TC=1, the full answer
over TCP), stay silent, answer garbage, cut its answers short or answer under another ID. Runs in-process (tests on loopback) or as a
script inside a namespace::

    python fake_dns.py --listen 10.77.2.2:5354 --truncate --record big.example=A:10.0.0.1
"""

from __future__ import annotations

import argparse
import collections
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Mapping, Sequence

from dnslib import AAAA, QTYPE, RCODE, RR, TXT, A, DNSRecord

Zone = Mapping[str, Sequence[tuple[str, str]]]  # name -> [(type, value)]


class FakeDns:
    def __init__(
        self,
        zone: Zone,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        truncate_udp: bool = False,
        silent: bool = False,
        garbage: bool = False,
        truncated: bool = False,
        wrong_id: bool = False,
        ttl: int = 300,
        log: str | None = None,
    ) -> None:
        self.zone = {k.lower().rstrip("."): list(v) for k, v in zone.items()}
        self.truncate_udp = truncate_udp
        self.silent = silent
        self.garbage = garbage
        self.truncated = truncated  # answers cut short inside their last record
        self.wrong_id = wrong_id  # answers under another message ID
        self.ttl = ttl
        self.questions: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._log = open(log, "a", buffering=1) if log else None  # noqa: SIM115
        self._lock = threading.Lock()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        fake = self

        class Udp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                data, sock = self.request
                reply = fake.reply(data, "udp")
                if reply is not None:
                    sock.sendto(reply, self.client_address)

        class Tcp(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                conn = self.request
                conn.settimeout(5)
                try:
                    while True:
                        head = _recv_exactly(conn, 2)
                        if head is None:
                            return
                        body = _recv_exactly(conn, struct.unpack(">H", head)[0])
                        if body is None:
                            return
                        reply = fake.reply(body, "tcp")
                        if reply is not None:
                            conn.sendall(struct.pack(">H", len(reply)) + reply)
                except OSError:
                    return

        class UdpServer(socketserver.ThreadingUDPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        class TcpServer(socketserver.ThreadingTCPServer):
            address_family = family
            daemon_threads = True
            allow_reuse_address = True

        for attempt in range(20):  # port 0: UDP's free port may be taken for TCP
            self.udp = UdpServer((host, port), Udp)
            self.port = self.udp.server_address[1]
            try:
                self.tcp = TcpServer((host, self.port), Tcp)
                break
            except OSError:
                self.udp.server_close()
                if port or attempt == 19:
                    raise
        self.host = host
        self._threads = [
            threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            for s in (self.udp, self.tcp)
        ]
        for t in self._threads:
            t.start()

    def count(self, name: str, qtype: str = "A", transport: str | None = None) -> int:
        with self._lock:
            return sum(
                n
                for (q, t, via), n in self.questions.items()
                if q == name and t == qtype and (transport is None or via == transport)
            )

    def reply(self, data: bytes, transport: str) -> bytes | None:
        try:
            query = DNSRecord.parse(data)
        except Exception:
            return None
        q = query.q
        name = str(q.qname).rstrip(".").lower()
        qtype = QTYPE.get(q.qtype)
        with self._lock:
            self.questions[(name, str(qtype), transport)] += 1
            if self._log is not None:
                self._log.write(f"{transport} {name} {qtype}\n")
        if self.silent:
            return None
        if self.garbage:
            return data[:2] + b"\x81\x80garbage"
        reply = query.reply()
        if name not in self.zone:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply.pack()
        for rtype, value in self.zone[name]:
            if rtype != qtype:
                continue
            rdata = {"A": A, "AAAA": AAAA, "TXT": TXT}[rtype](value)
            reply.add_answer(RR(q.qname, QTYPE.reverse[rtype], rdata=rdata, ttl=self.ttl))
        if transport == "udp" and self.truncate_udp:
            reply.rr = []
            reply.header.tc = 1
        packed: bytes = reply.pack()
        if self.truncated:
            packed = packed[:-3]
        if self.wrong_id:
            packed = bytes([packed[0] ^ 0x5A, packed[1]]) + packed[2:]
        return packed

    def close(self) -> None:
        for server in (self.udp, self.tcp):
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FakeDns:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _recv_exactly(conn: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)  # host:port
    parser.add_argument("--truncate", action="store_true")
    parser.add_argument("--silent", action="store_true")
    parser.add_argument("--record", action="append", default=[])  # name=TYPE:value
    parser.add_argument("--lifetime", type=float, default=600.0)
    parser.add_argument("--log")  # one line per question: "udp big.example A"
    args = parser.parse_args(argv)
    zone: dict[str, list[tuple[str, str]]] = {}
    for spec in args.record:
        name, _, rest = spec.partition("=")
        rtype, _, value = rest.partition(":")
        zone.setdefault(name, []).append((rtype, value))
    host, _, port = args.listen.rpartition(":")
    fake = FakeDns(
        zone,
        host.strip("[]"),
        int(port),
        truncate_udp=args.truncate,
        silent=args.silent,
        log=args.log,
    )
    print("listening", flush=True)
    try:
        time.sleep(args.lifetime)  # the lab kills us when it goes
    finally:
        fake.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
