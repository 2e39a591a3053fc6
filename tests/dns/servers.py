"""Real DNS servers for tests: dnsmasq (plain UDP/TCP) and dnsdist (DoT, DoH) with test
certificates made by openssl, on loopback or inside a lab namespace.

``run`` and ``popen`` are a namespace's (``Netns.run/popen``) or the host's
(``host_run/host_popen``), so the same helpers serve loopback tests and the lab.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import attrs

Run = Callable[..., subprocess.CompletedProcess[str]]
Popen = Callable[..., subprocess.Popen[str]]

# dnsdist health-checks its backend with this name; dnsmasq must answer it or dnsdist
# marks the backend down and refuses every query (403 on DoH, a closed DoT connection).
HEALTH_CHECK_NAME = "a.root-servers.net"


def missing_binaries(*names: str) -> str | None:
    lacking = [n for n in names if shutil.which(n) is None]
    return f"needs {', '.join(lacking)} (scripts/setup installs it)" if lacking else None


def host_run(argv: Sequence[str], *, timeout: float = 10.0, check: bool = True,
             input: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          check=check, input=input)  # fmt: skip


def host_popen(argv: Sequence[str], **kw: object) -> subprocess.Popen[str]:
    kw.setdefault("stdout", subprocess.DEVNULL)
    kw.setdefault("stderr", subprocess.DEVNULL)
    return subprocess.Popen(list(argv), text=True, **kw)  # type: ignore[call-overload]


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP right now (loopback tests only)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no free port")


@attrs.frozen
class Certs:
    ca: Path
    cert: Path
    key: Path


def make_certs(directory: Path, name: str, ips: Sequence[str]) -> Certs:
    """A test CA and a server certificate for ``name`` and ``ips`` (openssl, EC P-256)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    host_run(["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
              "-subj", "/CN=trio-tproxy test CA",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign"])  # fmt: skip
    host_run(["openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", f"/CN={name}"])
    san = ",".join([f"DNS:{name}", *(f"IP:{ip}" for ip in ips)])
    ext = directory / "server.ext"
    ext.write_text(f"subjectAltName={san}\nextendedKeyUsage=serverAuth\n")
    host_run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
              "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext])  # fmt: skip
    return Certs(ca, cert, key)


class Dnsmasq:
    """dnsmasq answering ``records`` (name -> addresses) and ``txt`` (name -> text),
    with --log-queries to a file."""

    def __init__(self, popen: Popen, workdir: Path, name: str, *, listen: str, port: int,
                 records: Mapping[str, Sequence[str]], txt: Mapping[str, str] | None = None,
                 ttl: int = 300) -> None:  # fmt: skip
        self.log_path = workdir / f"{name}.log"
        self.log_path.write_text("")
        argv = [
            "dnsmasq", "--keep-in-foreground",  # not --no-daemon: that serves TCP inline
            "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--bind-interfaces",
            f"--listen-address={listen}", f"--port={port}", f"--local-ttl={ttl}",
            "--log-queries", f"--log-facility={self.log_path}", "--user=root", "--pid-file=",
            f"--host-record={HEALTH_CHECK_NAME},198.41.0.4",
        ]  # fmt: skip
        for host, addresses in records.items():
            argv.append(f"--host-record={host},{','.join(addresses)}")
        for host, text in (txt or {}).items():
            argv.append(f"--txt-record={host},{text}")
        self.process = popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.listen, self.port = listen, port

    def queries(self, name: str, qtype: str = "A") -> int:
        """Questions for ``name`` this server got (from its query log)."""
        pattern = re.compile(rf"query\[{qtype}\] {re.escape(name)} from ")
        return len(pattern.findall(self.log_path.read_text()))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Dnsdist:
    """dnsdist with a DoT and a DoH listener in front of one dnsmasq backend."""

    def __init__(self, popen: Popen, workdir: Path, certs: Certs, listen: str, *, plain: int,
                 dot: int, doh: int, backend: str) -> None:  # fmt: skip
        config = workdir / "dnsdist.conf"
        config.write_text(
            f'setLocal("{listen}:{plain}")\n'
            f'addTLSLocal("{listen}:{dot}", "{certs.cert}", "{certs.key}")\n'
            f'addDOHLocal("{listen}:{doh}", "{certs.cert}", "{certs.key}", "/dns-query")\n'
            f'newServer({{address="{backend}"}})\n'
            'setSecurityPollSuffix("")\n'
        )
        self.process = popen(["dnsdist", "--supervised", "--disable-syslog", "-C", str(config)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        self.listen, self.plain = listen, plain

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()


def wait_answers(run: Run, server: str, port: int, name: str, *, tcp: bool = False,
                 timeout: float = 15.0) -> None:  # fmt: skip
    """Poll with dig until ``server`` answers ``name`` (bounded by ``timeout``)."""
    deadline = time.monotonic() + timeout
    argv = ["dig", "+short", "+time=1", "+tries=1", f"@{server}", "-p", str(port), name]
    if tcp:
        argv.insert(1, "+tcp")
    last = ""
    while time.monotonic() < deadline:
        result = run(argv, check=False)
        if result.returncode == 0 and result.stdout.strip():
            return
        last = result.stdout + result.stderr
        time.sleep(0.1)
    raise TimeoutError(f"{server}:{port} does not answer {name}: {last}")


def dig(run: Run, server: str, name: str, *opts: str, port: int = 53,
        qtype: str = "A") -> list[str]:  # fmt: skip
    """``dig +short``'s lines (fails the test when dig fails)."""
    result = run(["dig", "+short", "+time=5", "+tries=1", *opts, f"@{server}", "-p", str(port),
                  name, qtype], timeout=30)  # fmt: skip
    return result.stdout.split()
