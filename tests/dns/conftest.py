"""Fixtures for DNS tests: a service built from a TOML snippet, fake upstreams on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from trio_tproxy.config import parse_config_text
from trio_tproxy.dns.service import DnsService
from trio_tproxy.geo import GeoData
from trio_tproxy.outbound import build_outbounds
from trio_tproxy.route import compile_router

from .fake_dns import FakeDns, Zone

LISTS = {
    "cn": "domain:cn\nfull:www.example.org\n",
    "ads": "full:ads.example.com\nkeyword:tracker\n",
}


def config_text(dns: str, rules_dir: Path, extra: str = "") -> str:
    return f"""
[geodata]
rules_dir = "{rules_dir}"
geoip = "{rules_dir}/none.mmdb"
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = 12345
[[outbounds]]
tag = "direct"
type = "direct"
[[outbounds]]
tag = "block"
type = "block"
{extra}
[dns]
{dns}
"""


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in LISTS.items():
        (rules / name).write_text(text)
    return rules


@pytest.fixture
def make_service(rules_dir: Path) -> Callable[..., DnsService]:
    def make(dns: str, extra: str = "") -> DnsService:
        cfg = parse_config_text(config_text(dns, rules_dir, extra))
        geo = GeoData.load(cfg.geodata)
        return DnsService(cfg, geo, compile_router(cfg, geo), build_outbounds(cfg))

    return make


@pytest.fixture
def fake_dns() -> Iterator[Callable[..., FakeDns]]:
    started: list[FakeDns] = []

    def start(zone: Zone, **kw: object) -> FakeDns:
        fake = FakeDns(zone, **kw)  # type: ignore[arg-type]
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.close()
