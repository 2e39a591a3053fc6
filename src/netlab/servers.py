"""Real servers inside a namespace: nginx (HTTP, dual stack) and iperf3.

nginx logs each request with the peer address *it* saw, which is how a test tells a
direct flow (client address) from a proxied one (the gateway's WAN address).
"""

from __future__ import annotations

import shlex
import subprocess
import time
from pathlib import Path

import attrs

from netlab.namespace import Netns

_START_TIMEOUT = 5.0
_POLL_INTERVAL = 0.01

# One line per request, space separated; the request line is last because it may
# contain spaces.
_LOG_FORMAT = '$remote_addr $remote_port $server_addr $server_port $status "$request"'

_NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
# Workers must read test files under root-only 0700 temp dirs.
user root;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format netlab '{log_format}';
    access_log {work}/access.log netlab;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    default_type application/octet-stream;
    server {{
        listen {port}{ssl};
        listen [::]:{port}{ssl} ipv6only=on;
        root {root};
        {tls}
    }}
}}
"""


@attrs.frozen
class AccessLogEntry:
    remote_addr: str
    remote_port: int
    server_addr: str
    server_port: int
    status: int
    request: str


@attrs.frozen
class HttpServer:
    process: subprocess.Popen[str]
    port: int
    access_log: Path

    def requests(self, *, wait: float = 1.0) -> list[AccessLogEntry]:
        """Every request logged so far. nginx logs a request once it has sent the
        response, which a client behind a proxy may have read before that: when none is
        logged yet, wait up to ``wait`` seconds for the first one."""
        deadline = time.monotonic() + wait
        while True:
            text = self.access_log.read_text() if self.access_log.exists() else ""
            if text or time.monotonic() >= deadline:
                return [_parse_log_line(line) for line in text.splitlines()]
            time.sleep(0.02)


def _parse_log_line(line: str) -> AccessLogEntry:
    remote_addr, remote_port, server_addr, server_port, status, request = line.split(" ", 5)
    return AccessLogEntry(
        remote_addr=remote_addr,
        remote_port=int(remote_port),
        server_addr=server_addr,
        server_port=int(server_port),
        status=int(status),
        request=request.strip('"'),
    )


@attrs.frozen
class TestCertificate:
    """A self-signed certificate for some names; clients trust it with ``--cacert path``."""

    path: Path
    key: Path


def make_certificate(workdir: Path, names: tuple[str, ...]) -> TestCertificate:
    """A self-signed certificate (its own CA) valid for ``names``, made by openssl."""
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    san = ",".join(f"DNS:{name}" for name in names)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "2", "-subj", f"/CN={names[0]}", "-addext", f"subjectAltName={san}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return TestCertificate(cert, key)


def start_http_server(
    netns: Netns, root_dir: Path, port: int = 80, *, tls: TestCertificate | None = None
) -> HttpServer:
    """nginx serving root_dir on 0.0.0.0:port and [::]:port (HTTPS with ``tls``);
    returns once listening."""
    work = netns.workdir / f"nginx-{port}"
    work.mkdir()
    conf = work / "nginx.conf"
    tls_conf = f"ssl_certificate {tls.path}; ssl_certificate_key {tls.key};" if tls else ""
    text = _NGINX_CONF.format(
        work=work, port=port, root=root_dir.resolve(), log_format=_LOG_FORMAT,
        ssl=" ssl" if tls else "", tls=tls_conf,
    )  # fmt: skip
    conf.write_text(text)
    # -e: the early error log, before the config is read (else /var/log/nginx/...).
    argv = ["nginx", "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")]
    process = netns.popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_listening(netns, port, process=process)
    return HttpServer(process=process, port=port, access_log=work / "access.log")


def start_iperf3_server(netns: Netns, port: int = 5201) -> subprocess.Popen[str]:
    """`iperf3 -s` (dual stack) on port; returns once listening."""
    process = netns.popen(["iperf3", "-s", "-p", str(port)], stdout=subprocess.DEVNULL)
    wait_listening(netns, port, process=process)
    return process


def _command(process: subprocess.Popen[str]) -> str:
    args = process.args
    if isinstance(args, list | tuple):
        return shlex.join(str(arg) for arg in args)
    return str(args)


def wait_listening(
    netns: Netns,
    port: int,
    *,
    udp: bool = False,
    process: subprocess.Popen[str] | None = None,
    timeout: float = _START_TIMEOUT,
) -> None:
    """Poll `ss` until something listens on port (raise if `process` dies first)."""
    argv = ["ss", "-H", "-uln" if udp else "-tln", "sport", "=", f":{port}"]
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / _POLL_INTERVAL) + 1):
        if netns.run(argv).stdout.strip():
            return
        if process is not None and process.poll() is not None:
            stderr = process.stderr.read() if process.stderr is not None else ""
            raise RuntimeError(f"{_command(process)} exited {process.returncode}: {stderr.strip()}")
        if time.monotonic() > deadline:
            break
        time.sleep(_POLL_INTERVAL)
    raise TimeoutError(f"nothing listens on port {port} in {netns.name} after {timeout}s")
