"""What a running gateway imports is what its config uses (issue 20, memory).

Each check runs in a fresh interpreter (``sys.executable``, this PYTHONPATH): in the test
process every module has long been imported by other tests. cryptography alone costs a
process ~6 MB (its own OpenSSL build), blake3 ~0.6 MB.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

FIXTURES = Path(__file__).parent / "sniff" / "fixtures"

DIRECT_ONLY = """
[[inbounds]]
tag = "lan"
type = "tproxy"
port = 12345
network = ["tcp", "udp"]
[inbounds.sniffing]
enabled = true
dest_override = ["http", "tls", "quic"]
[[outbounds]]
tag = "direct"
type = "direct"
"""

# What a config of only direct outbounds, no DNS servers and no QUIC flow never needs.
UNUSED = ("cryptography", "blake3", "dnslib", "h11", "wsproto", "trio_tproxy.dns.http1",
          "trio_tproxy.outbound.shadowsocks", "trio_tproxy.outbound.trojan")  # fmt: skip
# What the gateway's flows and DNS use, short of app.py (whose controller API, imported
# with it, brings dnslib, h11 and wsproto).
FLOW_PATH = ("trio_tproxy.cli", "trio_tproxy.app", "trio_tproxy.runtime", "trio_tproxy.session",
             "trio_tproxy.udp.service", "trio_tproxy.inbound.tcp", "trio_tproxy.inbound.udp",
             "trio_tproxy.dns.server")  # fmt: skip


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_flow_path_imports_nothing_a_direct_config_does_not_use() -> None:
    out = run_python(f"""
        import importlib, sys
        for name in {FLOW_PATH!r}:
            importlib.import_module(name)
        from trio_tproxy.config import parse_config_text
        from trio_tproxy.runtime import Runtime
        from trio_tproxy.sniff import sniff_datagrams, sniff_stream

        Runtime.build(parse_config_text({DIRECT_ONLY!r}))
        sniff_stream(b"GET / HTTP/1.1\\r\\nHost: example.com\\r\\n\\r\\n")
        sniff_datagrams([bytes(1200)])  # not a QUIC packet: nothing to decrypt
        print(sorted(m for m in {UNUSED!r} if m in sys.modules))
    """)
    assert out.strip() == "[]"


def test_app_imports_no_unused_crypto() -> None:
    out = run_python(f"""
        import sys
        from trio_tproxy import app, cli
        print(sorted(m for m in {UNUSED[:2]!r} if m in sys.modules))
    """)
    assert out.strip() == "[]"


def test_dns_messages_import_dnslib_when_parsed() -> None:
    out = run_python("""
        import sys
        from trio_tproxy.dns.message import parse_query_general, qtype_name
        print("dnslib" in sys.modules)
        query = bytes.fromhex("abcd01000001000000000000076578616d706c6503636f6d0000010001")
        name, qtype = parse_query_general(query).name, qtype_name(28)
        print("dnslib" in sys.modules, name, qtype)
    """)
    assert out.split("\n")[:2] == ["False", "True example.com AAAA"]


def test_quic_sniffing_imports_its_crypto_on_first_initial() -> None:
    datagrams = [(FIXTURES / f"quic_chrome-{i}.bin").read_bytes() for i in range(4)]
    out = run_python(f"""
        import sys
        from trio_tproxy.sniff import sniff_datagrams

        print("cryptography" in sys.modules)
        sniffed = sniff_datagrams({datagrams!r})
        print("cryptography" in sys.modules, sniffed.protocol, sniffed.domain)
    """)
    assert out.split("\n")[:2] == ["False", "True quic example.test"]


ENCRYPTED = """
[[outbounds]]
tag = "ss"
type = "shadowsocks"
server = "192.0.2.1:8388"
method = "2022-blake3-aes-128-gcm"
password = "AAAAAAAAAAAAAAAAAAAAAA=="
[[outbounds]]
tag = "tj"
type = "trojan"
server = "192.0.2.2:443"
password = "secret"
"""


def test_encrypted_outbounds_are_built_when_configured() -> None:
    config = DIRECT_ONLY + ENCRYPTED
    out = run_python(f"""
        import sys
        from trio_tproxy.config import parse_config_text
        from trio_tproxy.outbound import build_outbounds

        built = build_outbounds(parse_config_text({config!r}))
        print(type(built["ss"]).__name__, type(built["tj"]).__name__,
              "cryptography" in sys.modules)
    """)
    assert out.strip() == "ShadowsocksOutbound TrojanOutbound True"


MISSING_CA = """
[[outbounds]]
tag = "tj"
type = "trojan"
server = "192.0.2.2:443"
password = "secret"
ca = "/nonexistent/ca.pem"
"""


def test_a_lazily_built_outbound_still_reports_config_errors() -> None:
    config = DIRECT_ONLY + MISSING_CA
    out = run_python(f"""
        from trio_tproxy.config import ConfigErrors, parse_config_text
        from trio_tproxy.outbound import build_outbounds

        try:
            build_outbounds(parse_config_text({config!r}))
        except ConfigErrors as exc:
            print([e.path for e in exc.errors])
    """)
    assert out.strip() == "['$.outbounds[1]']"


DNS_SERVER = """
[[dns.servers]]
address = "192.0.2.53"
"""
SNIFFING_WITH_DNS = DIRECT_ONLY + DNS_SERVER


def test_workers_get_what_their_flows_will_need_before_the_fork() -> None:
    """With workers, the runtime (built before the fork) imports the QUIC ciphers for a
    UDP inbound that sniffs and dnslib for DNS servers; one process waits for a need."""
    code = """
        import sys
        from trio_tproxy.config import parse_config_text
        from trio_tproxy.runtime import Runtime

        Runtime.build(parse_config_text({config!r}))
        print(sorted(m for m in ("cryptography", "dnslib") if m in sys.modules))
    """
    one = run_python(code.format(config=SNIFFING_WITH_DNS))
    assert one.strip() == "[]"
    workers = run_python(code.format(config="[process]\nworkers = 2\n" + SNIFFING_WITH_DNS))
    assert workers.strip() == "['cryptography', 'dnslib']"
    no_udp = SNIFFING_WITH_DNS.replace('network = ["tcp", "udp"]', 'network = ["tcp"]')
    workers = run_python(code.format(config="[process]\nworkers = 2\n" + no_udp))
    assert workers.strip() == "['dnslib']"
