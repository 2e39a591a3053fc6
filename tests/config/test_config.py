"""The configuration schema: every section of SPEC.md parses; every mistake is reported
at once as ``message @ $.path``."""

from __future__ import annotations

from pathlib import Path

import pytest

from trio_tproxy.config import (
    ConfigErrors,
    Duration,
    HostPort,
    PortRanges,
    SocksOutbound,
    TproxyInbound,
    load_config,
    parse_config_text,
)
from trio_tproxy.config.errors import BadValue

REPO = Path(__file__).resolve().parents[2]
MINIMAL = """
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


def test_minimal_config_gets_v2ray_defaults() -> None:
    cfg = parse_config_text(MINIMAL)
    ib = cfg.inbounds[0]
    assert isinstance(ib, TproxyInbound)
    assert (ib.listen, ib.network, ib.mark) == ("::", ("tcp", "udp"), 0)
    assert ib.sniffing.timeout == Duration(0.3)
    p = cfg.policy
    assert (p.conn_idle.seconds, p.uplink_only.seconds, p.downlink_only.seconds) == (300, 1, 1)
    assert cfg.routing.domain_strategy == "as_is"
    assert cfg.firewall.bypass == ("geoip:private",)


def test_shipped_config_parses() -> None:
    cfg = load_config(REPO / "conf" / "main.toml")
    assert [ob.tag for ob in cfg.outbounds] == ["proxy", "direct", "block", "dns-out"]
    assert isinstance(cfg.outbounds[0], SocksOutbound)
    assert cfg.outbounds[0].server == HostPort("127.0.0.1", 1080)
    assert cfg.dns.hosts["router.lan"] == ("192.168.1.1",)


def test_spec_example_parses() -> None:
    """The example in SPEC.md, verbatim, when it is available beside the repo."""
    spec = REPO.parent / "shared" / "SPEC.md"
    if not spec.exists():
        pytest.skip("shared/SPEC.md is not beside this checkout")
    text = spec.read_text()
    example = text.split("```toml", 1)[1].split("```", 1)[0]
    cfg = parse_config_text(example)
    assert [type(ob).TYPE for ob in cfg.outbounds] == ["direct", "socks", "http", "block", "dns"]
    assert cfg.routing.rules[4].port == PortRanges(((6881, 6889), (51413, 51413)))
    assert cfg.dns.hosts["domain:internal.example"] == ("10.0.0.5", "fd00::5")


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        (
            '[log]\nlevel = "loud"',
            "expected one of debug | info | warning | error, got 'loud' @ $.log.level",
        ),
        ("[log]\nacess = true", "unknown key 'acess' @ $.log.acess"),
        ("[policy]\nconn_idle = 300", "durations are strings with a unit"),
        ('[policy]\nconn_idle = "5 min"', "bad duration '5 min'"),
        ('[policy]\nhandshake = "0s"', "handshake must be positive @ $.policy.handshake"),
        (
            '[[routing.rules]]\nip = ["10.0.0.1/8"]\noutbound = "direct"',
            "has host bits set @ $.routing.rules[0].ip[0]",
        ),
        ('[[routing.rules]]\nip = "geoip:cnn"\noutbound = "direct"', "bad geoip entry 'geoip:cnn'"),
        ('[[routing.rules]]\nport = "80-70000"\noutbound = "direct"', "bad port range '80-70000'"),
        ('[[routing.rules]]\nport = "443-80"\noutbound = "direct"', "bad port range '443-80'"),
        ('[[routing.rules]]\nport = "http"\noutbound = "direct"', "bad port range 'http'"),
        (
            '[[routing.rules]]\nport = 53\noutbound = "nowhere"',
            "unknown outbound tag 'nowhere' @ $.routing.rules[0].outbound",
        ),
        (
            '[[routing.rules]]\noutbound = "direct"',
            "rule has no condition (it would match everything) @ $.routing.rules[0]",
        ),
        (
            '[[routing.rules]]\ndomain = "domian:x.com"\noutbound = "direct"',
            "unknown domain entry prefix",
        ),
        ('[[routing.rules]]\ndomain = "regexp:(("\noutbound = "direct"', "bad regexp"),
        (
            '[[routing.rules]]\nnetwork = "tcp,icmp"\noutbound = "direct"',
            "expected one of tcp | udp, got 'icmp'",
        ),
        (
            '[[routing.rules]]\ninbound_tag = "nope"\noutbound = "direct"',
            "unknown inbound tag 'nope' @ $.routing.rules[0].inbound_tag[0]",
        ),
        (
            '[[routing.rules]]\nprotocol = "ftp"\noutbound = "direct"',
            "@ $.routing.rules[0].protocol[0]",
        ),
        (
            '[[outbounds]]\ntag = "direct"\ntype = "block"',
            "duplicate outbound tag 'direct' @ $.outbounds[0].tag",
        ),
        ('[[outbounds]]\ntag = "p"\ntype = "socks"\nserver = "1.2.3.4"', "a port is required"),
        (
            '[[outbounds]]\ntag = "p"\ntype = "socks"\nserver = "1.2.3.4:1080"\nusername = "a"',
            "username and password go together @ $.outbounds[1]",
        ),
        (
            '[[outbounds]]\ntag = "p"\ntype = "vmess"',
            "unknown outbound type 'vmess': expected one of direct | socks | http | block | dns | shadowsocks | trojan | selector | urltest | fallback @ $.outbounds[1]",
        ),
        (
            '[[outbounds]]\ntag = "p"\ntype = "direct"\nmark = 4294967296',
            "mark 4294967296 out of range",
        ),
        (
            '[[outbounds]]\ntag = "p"\ntype = "direct"\nmark = "255"',
            "expected an integer, got '255' @ $.outbounds[1].mark",
        ),
        (
            '[[inbounds]]\ntag = "in2"\ntype = "redirect"\nport = 12345',
            "tcp port 12345 is already used by $.inbounds[0] @ $.inbounds[1].port",
        ),
        (
            '[[inbounds]]\ntag = "in2"\ntype = "redirect"\nport = 1\nnetwork = "udp"',
            "expected one of tcp, got 'udp' @ $.inbounds[1].network[0]",
        ),
        (
            '[[inbounds]]\ntag = "in2"\ntype = "tproxy"\nport = 0',
            "port 0 out of range 1-65535 @ $.inbounds[1].port",
        ),
        (
            '[[inbounds]]\ntag = "in2"\ntype = "tproxy"\nport = 2\nlisten = "localhost"',
            "bad IP address 'localhost' @ $.inbounds[1].listen",
        ),
        (
            '[[inbounds]]\ntag = "in2"\ntype = "tproxy"\nport = 2\nsniffing = { dest_override = ["fakedns"] }',
            "@ $.inbounds[1].sniffing.dest_override[0]",
        ),
        ('[dns]\nlisten = "127.0.0.1"', "a port is required"),
        ('[[dns.servers]]\naddress = "quic://1.1.1.1"', "unknown DNS server scheme 'quic'"),
        (
            '[[dns.servers]]\naddress = "tcp://dns.google"',
            "bad IP address 'dns.google' @ $.dns.servers[0].address",
        ),
        (
            '[[dns.servers]]\naddress = "1.1.1.1"\noutbound = "nope"',
            "unknown outbound tag 'nope' @ $.dns.servers[0].outbound",
        ),
        ('[dns.hosts]\n"a.example" = "not an ip!"', "neither an IP address nor a host name"),
        ("[firewall]\nroute_table = 254", "route_table 254 is reserved"),
        ('[firewall]\nlan_interfaces = "this-name-is-too-long"', "bad interface name"),
        ("[firewall]\nfwmark = 0", "fwmark 0 out of range"),
        ("[firewall]\nauto = 1", "expected true or false, got 1 @ $.firewall.auto"),
        ("bogus = 1", "unknown key 'bogus' @ $.outbounds[0].bogus"),
        ("[log\nlevel = 1", "invalid TOML"),
    ],
)
def test_bad_config_is_reported_with_its_path(snippet: str, expected: str) -> None:
    errors = errors_of(MINIMAL + snippet)
    assert any(expected in e for e in errors), errors


def test_every_error_is_reported_at_once() -> None:
    text = (
        MINIMAL
        + """
[log]
level = "loud"
[policy]
grace = 5
[[routing.rules]]
port = "x"
outbound = "direct"
"""
    )
    errors = errors_of(text)
    assert len(errors) == 3
    assert all(" @ $" in e for e in errors)


def test_cross_checks_are_reported_together() -> None:
    text = (
        MINIMAL
        + """
[[routing.rules]]
outbound = "nowhere"
[firewall]
route_table = 255
"""
    )
    assert len(errors_of(text)) == 3


def test_top_level_unknown_key() -> None:
    assert "unknown key 'bogus' @ $.bogus" in errors_of("bogus = 1\n" + MINIMAL)


def test_fwmark_equal_to_an_outbound_mark_is_a_loop() -> None:
    text = MINIMAL.replace('type = "direct"', 'type = "direct"\nmark = 1')
    assert any("fwmark 1 equals an outbound mark" in e for e in errors_of(text))


def test_missing_file() -> None:
    with pytest.raises(ConfigErrors, match="config file not found"):
        load_config("/nonexistent/trio-tproxy.toml")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("300ms", 0.3), ("5s", 5), ("2m", 120), ("1h", 3600), ("1m30s", 90), ("1.5s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert Duration.parse(text).seconds == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "s", "5 s", "5sec", "-1s", "1s2", 5, True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(BadValue):
        Duration.parse(text)


def test_port_ranges_borders() -> None:
    ports = PortRanges.parse("53,443,1000-2000")
    assert [p in ports for p in (52, 53, 54, 443, 999, 1000, 2000, 2001)] == [
        False, True, False, True, False, True, True, False,
    ]  # fmt: skip
    assert str(ports) == "53,443,1000-2000"
    assert 0 in PortRanges.parse(0)
    assert 65535 in PortRanges.parse("65535")


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [("1.2.3.4:80", "1.2.3.4", 80), ("[::1]:53", "::1", 53), ("proxy.lan:1080", "proxy.lan", 1080)],
)
def test_host_port(text: str, host: str, port: int) -> None:
    assert HostPort.parse(text) == HostPort(host, port)
    assert str(HostPort.parse(text)) == text


@pytest.mark.parametrize("text", ["::1:53", "[::1", "1.2.3.4:0", "1.2.3.4:x", ":80", ""])
def test_bad_host_port(text: str) -> None:
    with pytest.raises(BadValue):
        HostPort.parse(text)


@pytest.mark.parametrize("listen", ["0.0.0.0:9090", "[::]:9090", "192.168.1.1:9090", "gw.lan:9090"])
def test_api_off_loopback_needs_a_secret(listen: str) -> None:
    errors = errors_of(MINIMAL + f'[api]\nlisten = "{listen}"\n')
    assert any("set a secret" in e and e.endswith("@ $.api.secret") for e in errors), errors


@pytest.mark.parametrize(
    ("listen", "secret"),
    [("127.0.0.1:9090", ""), ("[::1]:9090", ""), ("localhost:9090", ""), ("0.0.0.0:9090", "x")],
)
def test_api_loopback_or_secret_is_fine(listen: str, secret: str) -> None:
    cfg = parse_config_text(MINIMAL + f'[api]\nlisten = "{listen}"\nsecret = "{secret}"\n')
    assert cfg.api is not None and cfg.api.secret == secret
