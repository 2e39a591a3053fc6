"""``python -m netlab.demo``: a sandboxed gateway you can watch.

Builds a LAN in three network namespaces (client -- gateway -- server), diverts the
client's traffic on the gateway with `trio-tproxy firewall apply` (nftables TPROXY),
runs trio-tproxy there, sends real curl requests from the client, prints what the client
got and trio-tproxy's access log, and removes everything again (`trio-tproxy firewall
remove`). Touches nothing outside the namespaces it creates.
"""

from __future__ import annotations

import argparse
import ipaddress
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from netlab import Lab, requirements_met
from netlab.namespace import CommandError, Netns
from netlab.proxy import ProxyProcess
from netlab.servers import start_http_server, wait_listening

PORT = 12345
MARK = 255
SS_PORT, SS_METHOD, SS_PASSWORD = 8388, "aes-128-gcm", "demo-password"
ABROAD = 8080  # the port the demo sends through the Shadowsocks server


def demo_config(lab: Lab) -> str:
    blocked_ip = lab.server.extra_ip4[1]
    lan4 = ipaddress.ip_interface(f"{lab.client.ip4}/24").network
    lan6 = ipaddress.ip_interface(f"{lab.client.ip6}/64").network
    return f"""
# The demo gateway's configuration (written by netlab.demo).
[log]
level = "info"
access = true

[process]
workers = 2                 # a supervisor, a hub and two worker processes sharing the ports

[[inbounds]]
tag = "lan"
type = "tproxy"
port = {PORT}
network = ["tcp"]
[inbounds.sniffing]
enabled = true              # learn the domain from the HTTP Host header / TLS SNI

[[outbounds]]
tag = "direct"              # the default: no rule matched
type = "direct"
mark = {MARK}               # the proxy's own packets skip the diversion

[[outbounds]]
tag = "block"
type = "block"
response = "http"           # a 403 answer, then close

[[routing.rules]]
domain = ["domain:ads.example"]
outbound = "block"

[[routing.rules]]
ip = ["{blocked_ip}/32"]
outbound = "block"

[[outbounds]]
tag = "ss-abroad"           # an encrypted upstream: ss-server in the server namespace
type = "shadowsocks"
server = "{lab.server.ip4}:{SS_PORT}"
method = "{SS_METHOD}"
password = "{SS_PASSWORD}"
mark = {MARK}

[[routing.rules]]
port = "{ABROAD}"
outbound = "ss-abroad"

[firewall]                  # what `trio-tproxy firewall apply` installs
lan_interfaces = ["{lab.gateway.lan_if}"]
# The sandbox lives in private ranges, which the default bypass (geoip:private) would
# exempt; here only the LAN itself is left alone.
bypass = ["{lan4}", "{lan6}"]
"""


def requests(lab: Lab) -> list[tuple[str, list[str]]]:
    s = lab.server
    return [
        ("IPv4, by address", [f"http://{s.ip4}/"]),
        ("IPv6, by address", [f"http://[{s.ip6}]/"]),
        ("a name, sniffed from Host", ["-H", "Host: www.example.com", f"http://{s.extra_ip4[0]}/"]),
        ("an ad domain (rule #0)", ["-H", "Host: ads.example", f"http://{s.extra_ip4[0]}/"]),
        ("a blocked address (rule #1)", [f"http://{s.extra_ip4[1]}/"]),
        ("through Shadowsocks (rule #2)", [f"http://{s.ip4}:{ABROAD}/"]),
    ]


def firewall(gateway: Netns, action: str, config: Path) -> str:
    """`trio-tproxy firewall ACTION CONFIG` in the gateway namespace; its one-line answer."""
    argv = [sys.executable, "-m", "trio_tproxy", "firewall", action, str(config)]
    result = gateway.run(argv, check=False)
    if result.returncode != 0:
        raise CommandError(result.returncode, argv, result.stdout, result.stderr)
    return result.stdout.strip()


def run_demo() -> int:
    reason = requirements_met()
    if reason is not None:
        print(f"demo: cannot build the sandbox here: {reason}", file=sys.stderr)
        return 1
    with Lab.create(prefix="demo") as lab, tempfile.TemporaryDirectory() as web:
        Path(web, "index.html").write_text("hello from the server\n")
        start_http_server(lab.server, Path(web), port=80)
        start_http_server(lab.server, Path(web), port=ABROAD)
        if shutil.which("ss-server") is None:
            print("demo: ss-server (shadowsocks-libev) is missing: run scripts/setup",
                  file=sys.stderr)  # fmt: skip
            return 1
        ss = lab.server.popen(["ss-server", "-s", lab.server.ip4, "-p", str(SS_PORT), "-k",
                               SS_PASSWORD, "-m", SS_METHOD], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)  # fmt: skip
        wait_listening(lab.server, SS_PORT, process=ss)
        config = demo_config(lab)
        config_path = lab.gateway.workdir / "demo.toml"
        config_path.write_text(config)
        print(f"sandbox: client {lab.client.name} ({lab.client.ip4}, {lab.client.ip6})")
        print(f"         gateway {lab.gateway.name}, server {lab.server.name}")
        applied = firewall(lab.gateway, "apply", config_path)
        print(f"gateway: trio-tproxy firewall apply -> {applied}")
        proxy = ProxyProcess(lab.gateway, config)
        try:
            proxy.wait_ready()
            print("trio-tproxy is ready in the gateway namespace\n")
            for what, args in requests(lab):
                out = lab.client.run(
                    ["curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}",
                     *args], check=False,
                )  # fmt: skip
                status = out.stdout.strip() or out.stderr.strip()
                print(f"client: curl {' '.join(args):48} -> HTTP {status}   ({what})")
            proxy.wait_for("trio_tproxy.access", count=len(requests(lab)))
            print("\ntrio-tproxy's access log:")
            for line in proxy.access_lines():  # "... [w1] trio_tproxy.access: ..."
                head, _, flow = line.partition(" trio_tproxy.access: ")
                worker = head.rsplit(" ", 1)[-1] if head.endswith("]") else ""
                print(f"  {worker} {flow}".rstrip() if worker else f"  {flow}")
        finally:
            code = proxy.stop()
        print(f"\ntrio-tproxy stopped (exit {code})")
        removed = firewall(lab.gateway, "remove", config_path)
        print(f"gateway: trio-tproxy firewall remove -> {removed}")
        print("removing the sandbox")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netlab.demo",
                                     description=__doc__.split("\n\n")[1])  # fmt: skip
    parser.parse_args(argv)
    return run_demo()


if __name__ == "__main__":
    sys.exit(main())
