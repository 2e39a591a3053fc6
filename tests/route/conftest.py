"""Fixtures for routing tests: small rule directories, a small country DB, configs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from trio_tproxy.config import Config, parse_config_text
from trio_tproxy.geo import GeoData, build_country_mmdb
from trio_tproxy.route import Router, compile_router

# Test lists: small, but with includes, attributes, regexps and an affiliation.
LISTS = {
    "google": """
        # Google
        google.com
        full:www.google.cn @cn
        domain:googleapis.cn @cn
        doubleclick.net @ads
        regexp:^r[0-9]+---sn-[a-z0-9]+\\.googlevideo\\.com$
        keyword:googlesyndication @ads
    """,
    "cn": "include:tld-cn\ninclude:google @cn\nbaidu.com\nqq.com &games\n",
    "tld-cn": "cn\n",
    "ads": "include:google @ads\nfull:ad.example.com\n",
    "private": "lan\nlocalhost\nregexp:^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$\n",
    "games": "steampowered.com\n",
}
# 1.0.1.0/24 and 2400:3200::/32 are "CN", 8.8.8.0/24 "US", 1.1.1.0/24 "AU".
COUNTRIES = "1.0.1.0/24,CN\n2400:3200::/32,CN\n8.8.8.0/24,US\n1.1.1.0/24,AU\n"

BASE_CONFIG = """
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = 12345
[[outbounds]]
tag = "direct"
type = "direct"
[[outbounds]]
tag = "proxy"
type = "socks"
server = "192.0.2.10:1080"
[[outbounds]]
tag = "block"
type = "block"
[[outbounds]]
tag = "dns-out"
type = "dns"
"""


def write_lists(directory: Path, lists: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in lists.items():
        lines = [line.strip() for line in text.strip().splitlines()]
        (directory / name).write_text("\n".join(lines) + "\n")
    return directory


@pytest.fixture(scope="session")
def geodata_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("geodata")
    write_lists(root / "rules", LISTS)
    (root / "countries.csv").write_text(COUNTRIES)
    build_country_mmdb([root / "countries.csv"], root / "country.mmdb")
    return root


@pytest.fixture
def geo(geodata_dir: Path) -> GeoData:
    return GeoData(geodata_dir / "rules", geodata_dir / "country.mmdb")


@pytest.fixture(scope="session")
def base_config() -> str:
    """Inbound and outbounds (direct first: the default); append ``[routing]`` TOML."""
    return BASE_CONFIG


@pytest.fixture
def make_config() -> Callable[[str], Config]:
    def make(rules_toml: str) -> Config:
        return parse_config_text(BASE_CONFIG + rules_toml)

    return make


@pytest.fixture
def make_router(geo: GeoData, make_config: Callable[[str], Config]) -> Callable[..., Router]:
    def make(rules_toml: str, **kwargs: object) -> Router:
        return compile_router(make_config(rules_toml), geo, **kwargs)  # type: ignore[arg-type]

    return make
