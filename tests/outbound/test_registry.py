"""socks and http are real outbounds now: built from config, credentials checked when
the config is loaded (not when the first flow needs them)."""

from __future__ import annotations

import pytest

from trio_tproxy.config import ConfigErrors, parse_config_text
from trio_tproxy.outbound import HttpOutbound, SocksOutbound, build_outbounds

BASE = """
[[inbounds]]
tag = "in"
type = "tproxy"
port = 12345
[[outbounds]]
tag = "direct"
type = "direct"
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse_config_text(text)
    return [str(e) for e in info.value.errors]


def test_socks_and_http_are_built() -> None:
    cfg = parse_config_text(BASE + """
[[outbounds]]
tag = "proxy"
type = "socks"
server = "[2001:db8::10]:1080"
username = "alice"
password = "secret"
mark = 255
[[outbounds]]
tag = "web"
type = "http"
server = "proxy.lan:3128"
""")
    obs = build_outbounds(cfg)
    socks, http = obs["proxy"], obs["web"]
    assert isinstance(socks, SocksOutbound) and isinstance(http, HttpOutbound)
    assert socks.server.name == "socks proxy [2001:db8::10]:1080"
    assert socks.server.credentials == ("alice", "secret") and socks.server.mark == 255
    assert http.peer == "http proxy proxy.lan:3128" and http.credentials is None


def test_credential_limits_are_config_errors() -> None:
    long = "x" * 256
    assert errors_of(BASE + f"""
[[outbounds]]
tag = "proxy"
type = "socks"
server = "10.0.0.1:1080"
username = "{long}"
password = ""
[[outbounds]]
tag = "web"
type = "http"
server = "10.0.0.1:3128"
username = "a:b"
password = "c"
""") == [
        "SOCKS5 username must be 1-255 bytes (RFC 1929) @ $.outbounds[1].username",
        "SOCKS5 password must be 1-255 bytes (RFC 1929) @ $.outbounds[1].password",
        "an HTTP proxy username cannot contain ':' @ $.outbounds[2].username",
    ]
