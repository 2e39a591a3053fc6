"""Helpers for the importer tests: run an import, check its output with the real
`check`, and decide flows with the offline router exactly as `trio-tproxy match` does."""

from __future__ import annotations

import ipaddress
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import attrs
import pytest

from trio_tproxy.config import load_config
from trio_tproxy.dns.policy import compile_servers, select_servers
from trio_tproxy.geo import GeoData
from trio_tproxy.geo.dat import dat_domains, encode_geoip_dat, encode_geosite_dat
from trio_tproxy.importers import GeodataPaths, ImportResult, convert_clash, convert_v2ray
from trio_tproxy.route import FlowFacts, compile_router, explain, parse_target

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "rules"
MMDB = REPO / "geodata" / "country.mmdb"
SITE_LISTS = ("cn", "category-ads-all", "geolocation-!cn", "google")


def repo_geodata(directory: Path | None = None) -> GeodataPaths:
    """The repository's lists and database (and .dat files in ``directory``, if any)."""
    dats = {}
    if directory is not None:
        for name in ("geosite_dat", "geoip_dat"):
            found = directory / name.replace("_", ".")
            dats[name] = str(found) if found.exists() else ""
    return GeodataPaths(geoip=str(MMDB), rules_dir=str(RULES), **dats)


@pytest.fixture
def need_mmdb() -> None:
    if not MMDB.exists():
        pytest.skip("geodata/country.mmdb is missing (scripts/setup builds it)")


def write_dats(directory: Path) -> None:
    """geosite.dat and geoip.dat built from the shipped lists and database: the same
    answers whichever of the two sources a config reads."""
    geo = GeoData(RULES, MMDB)
    sites = {name: dat_domains(geo.geosite(name)) for name in SITE_LISTS}
    (directory / "geosite.dat").write_bytes(encode_geosite_dat(sites))
    nets = {}
    for code in ("CN", "US", "PRIVATE"):  # v2ray itself reads geoip:private from the file
        v4, v6 = geo.country_ranges(code)
        nets[code] = [
            net
            for lo, hi, cls in [(a, b, ipaddress.IPv4Address) for a, b in v4]
            + [(a, b, ipaddress.IPv6Address) for a, b in v6]
            for net in ipaddress.summarize_address_range(cls(lo), cls(hi))
        ]
    (directory / "geoip.dat").write_bytes(encode_geoip_dat(nets))


def fixture_in(tmp_path: Path, name: str, *, dats: bool = True) -> Path:
    """A copy of fixture ``name`` in ``tmp_path`` (with .dat files beside it)."""
    target = tmp_path / name
    shutil.copy(FIXTURES / name, target)
    if dats:
        write_dats(tmp_path)
    return target


def convert(kind: str, source: Path, geodata: GeodataPaths | None = None) -> ImportResult:
    function = convert_v2ray if kind == "v2ray" else convert_clash
    paths = geodata or repo_geodata(source.parent)
    return function(source.read_text(encoding="utf-8"), name=str(source), geodata=paths)


def source_rule_paths(toml_text: str) -> list[str]:
    """For each [[routing.rules]], the source path named in the comment above it."""
    paths: list[str] = []
    last = ""
    for line in toml_text.splitlines():
        found = re.match(r"# (\$\.(?:routing\.)?rules\[\d+\])", line)
        if found:
            last = found.group(1)
        elif line == "[[routing.rules]]":
            paths.append(last)
    return paths


@attrs.frozen
class Case:
    target: str
    outbound: str
    rule: int | None  # index into the SOURCE's rules; None = the default outbound
    port: int = 443
    network: str = "tcp"
    protocol: str | None = None
    source: str | None = None
    src_port: int = 0
    inbound: str | None = None
    resolved: tuple[str, ...] | None = None  # what the domain resolves to (as --resolve)

    def __str__(self) -> str:
        return f"{self.target}:{self.port}/{self.network}"


class Decider:
    """The offline router of a converted config, deciding as `match` does."""

    def __init__(self, config: Path, toml_text: str, rules_key: str) -> None:
        self.cfg = load_config(config)
        self.router = compile_router(self.cfg, GeoData.load(self.cfg.geodata), cache=None)
        prefix = f"$.{rules_key}["
        self.rule_sources = [
            int(p[len(prefix) : -1]) if p.startswith(prefix) else -1
            for p in source_rule_paths(toml_text)
        ]

    def dns_order(self, name: str) -> list[str]:
        """The servers the DNS splitter asks for ``name``, in order (their addresses)."""
        plans = compile_servers(self.cfg.dns, GeoData.load(self.cfg.geodata))
        picked = select_servers(name, plans, disable_fallback=self.cfg.dns.disable_fallback)
        return [self.cfg.dns.servers[i].address for i in picked]

    def decide(self, case: Case) -> tuple[str, int | None]:
        dst_ip, domain = parse_target(case.target)
        facts = FlowFacts(
            network=case.network,  # type: ignore[arg-type]
            dst_ip=dst_ip,
            dst_port=case.port,
            domain=domain,
            src_ip=ipaddress.ip_address(case.source) if case.source else None,
            src_port=case.src_port,
            inbound_tag=case.inbound or self.cfg.inbounds[0].tag,
            protocol="http1" if case.protocol == "http" else case.protocol,
        )
        resolved = None
        if case.resolved is not None:
            resolved = [ipaddress.ip_address(ip) for ip in case.resolved]
        expl = explain(self.router, facts, resolved)
        index = expl.decision.rule_index
        return expl.decision.outbound, None if index is None else self.rule_sources[index]


def omission_paths(result: ImportResult) -> list[str]:
    return [o.path for o in result.omissions]


def assert_reported(result: ImportResult, expected: Iterable[tuple[str, str]]) -> None:
    """Each (path, words) is reported: that path, with ``words`` in its reason."""
    lines = [str(o) for o in result.omissions]
    for path, words in expected:
        assert any(o.path == path and words.lower() in o.why.lower() for o in result.omissions), (
            f"{path} ({words}) not reported; got:\n" + "\n".join(lines)
        )
