"""v2ray .dat files as rule data: the same rules decide the same with ``rules_dir`` + a
MaxMind DB and with a geosite.dat / geoip.dat built from them; ``ext:`` / ``ext-ip:``
names; ``@attr``; bad files as ``check`` errors naming the file; the compile cache."""

from __future__ import annotations

import ipaddress
import json
import random
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path

import pytest

import trio_tproxy.route.compile as compile_module
import trio_tproxy.router_cache as cache_module
from trio_tproxy.cli import main
from trio_tproxy.config import Config, parse_config_text
from trio_tproxy.geo import GeoData, Ranges, build_country_mmdb
from trio_tproxy.geo.dat import (
    DatDomain,
    IPNetwork,
    dat_domains,
    encode_geoip_dat,
    encode_geosite_dat,
)
from trio_tproxy.geo.dlc import valid_list_name
from trio_tproxy.geo.geoip import CountryDB
from trio_tproxy.geo.geosite import GeositeLoader
from trio_tproxy.route import FlowFacts, Router, compile_router, explain, parse_target, render_text
from trio_tproxy.router_cache import CACHE_ENV, RouterCache
from trio_tproxy.runtime import not_yet_in_effect

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "rules"
SHIPPED_MMDB = REPO / "geodata" / "country.mmdb"
NOWHERE = Path("/nonexistent")
NONE: frozenset[str] = frozenset()

# A small country database: several blocks per country, both families.
COUNTRIES = """\
1.0.1.0/24,CN
1.0.2.0/23,CN
114.114.0.0/16,CN
223.5.0.0/16,CN
2400:3200::/32,CN
8.8.8.0/24,US
17.0.0.0/8,US
2001:4860::/32,US
1.1.1.0/24,AU
133.0.0.0/8,JP
"""
CODES = ("CN", "US", "AU", "JP")

HEAD = """
[[inbounds]]
tag = "tproxy-in"
type = "tproxy"
port = 12345
[[outbounds]]
tag = "fallback"
type = "direct"
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
"""
ROUTING = """
[routing]
domain_strategy = "ip_if_non_match"
[[routing.rules]]
domain = ["geosite:category-ads-all"]
outbound = "block"
[[routing.rules]]
domain = ["geosite:google@cn", "geosite:apple@cn"]
outbound = "direct"
[[routing.rules]]
domain = ["geosite:microsoft@-cn"]
port = "443"
outbound = "proxy"
[[routing.rules]]
domain = ["geosite:cn", "geosite:geolocation-cn", "geosite:private"]
outbound = "direct"
[[routing.rules]]
ip = ["geoip:private", "geoip:cn"]
outbound = "direct"
[[routing.rules]]
ip = ["geoip:!us"]
network = "udp"
outbound = "block"
[[routing.rules]]
domain = ["geosite:geolocation-!cn"]
outbound = "proxy"
"""
NAMES = ("category-ads-all", "google", "apple", "microsoft", "cn", "geolocation-cn", "private",
         "geolocation-!cn")  # fmt: skip

# (target, port, network, resolved addresses, expected outbound): with the small database
CASES: list[tuple[str, int, str, list[str] | None, str]] = [
    ("www.google.com", 443, "tcp", None, "proxy"),
    ("www.google.cn", 443, "tcp", None, "direct"),  # google@cn
    ("doubleclick.net", 443, "tcp", None, "block"),  # ads
    ("www.apple.com", 443, "tcp", None, "direct"),  # full:www.apple.com @cn
    ("developer.apple.com", 443, "tcp", None, "proxy"),
    ("www.microsoft.com", 443, "tcp", None, "proxy"),
    ("www.microsoft.com", 80, "tcp", None, "proxy"),  # rule 2 is port 443 only: !cn list
    ("www.baidu.com", 443, "tcp", None, "direct"),
    ("www.qq.com", 80, "udp", None, "direct"),
    ("localhost", 80, "tcp", None, "direct"),  # geosite:private
    ("nas", 80, "tcp", None, "direct"),  # geosite:private's dotless regexp
    ("nosuchname.org", 443, "tcp", ["1.0.1.5"], "direct"),  # resolved into geoip:cn
    ("nosuchname.org", 443, "udp", ["1.1.1.1"], "block"),  # not US, udp
    ("nosuchname.org", 443, "udp", ["8.8.8.8"], "fallback"),
    ("nosuchname.org", 443, "tcp", [], "fallback"),
    ("1.0.1.5", 443, "tcp", None, "direct"),
    ("114.114.114.114", 53, "udp", None, "direct"),
    ("2400:3200::1", 443, "tcp", None, "direct"),
    ("192.168.1.1", 80, "tcp", None, "direct"),  # geoip:private
    ("fe80::1", 80, "udp", None, "direct"),
    ("8.8.8.8", 53, "udp", None, "fallback"),
    ("1.1.1.1", 53, "udp", None, "block"),
    ("1.1.1.1", 53, "tcp", None, "fallback"),
    ("2001:4860::8888", 443, "udp", None, "fallback"),
    ("2a00::1", 443, "udp", None, "block"),  # in no country: not US
]


def networks(v4: Ranges, v6: Ranges) -> list[IPNetwork]:
    out: list[IPNetwork] = []
    for ranges, kind in ((v4, ipaddress.IPv4Address), (v6, ipaddress.IPv6Address)):
        for lo, hi in ranges:
            out.extend(ipaddress.summarize_address_range(kind(lo), kind(hi)))
    return out


def geosite_table(rules: Path) -> dict[str, list[DatDomain]]:
    """Every shipped list, includes and affiliations resolved, as geosite.dat holds it."""
    loader = GeositeLoader(rules)
    names = sorted(p.name for p in rules.iterdir() if valid_list_name(p.name))
    return {name.upper(): dat_domains(loader.resolve(name)) for name in names}


def geoip_table(mmdb: Path, codes: tuple[str, ...]) -> dict[str, list[IPNetwork]]:
    found = CountryDB(mmdb).extract(set(codes))
    return {code: networks(*found[code]) for code in codes}


class Source:
    """One geodata source twice: as rules_dir + mmdb, and as geosite.dat + geoip.dat."""

    def __init__(self, root: Path, mmdb: Path, sites: dict[str, list[DatDomain]]) -> None:
        self.mmdb = mmdb
        self.geosite_dat = root / "geosite.dat"
        self.geoip_dat = root / "geoip.dat"
        self.geosite_dat.write_bytes(encode_geosite_dat(sites))
        self.geoip_dat.write_bytes(encode_geoip_dat(geoip_table(mmdb, CODES)))

    def lists(self) -> GeoData:
        return GeoData(RULES, self.mmdb)

    def dats(self) -> GeoData:
        """Nothing but the .dat files: rules_dir and the database do not exist."""
        return GeoData(NOWHERE, NOWHERE, geosite_dat=self.geosite_dat, geoip_dat=self.geoip_dat)


@pytest.fixture(scope="module")
def shipped_sites() -> dict[str, list[DatDomain]]:
    return geosite_table(RULES)


@pytest.fixture(scope="module", params=["small-mmdb", "shipped-mmdb"])
def source(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    shipped_sites: dict[str, list[DatDomain]],
) -> Source:
    root = tmp_path_factory.mktemp("dat")
    if request.param == "shipped-mmdb":
        if not SHIPPED_MMDB.exists():
            pytest.skip("scripts/setup builds geodata/country.mmdb")
        return Source(root, SHIPPED_MMDB, shipped_sites)
    (root / "countries.csv").write_text(COUNTRIES)
    build_country_mmdb([root / "countries.csv"], root / "country.mmdb")
    return Source(root, root / "country.mmdb", shipped_sites)


@pytest.fixture(autouse=True)
def no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CACHE_ENV, "off")
    monkeypatch.setattr(cache_module, "RACY_NS", 0)  # lists are written just before use


def config(routing: str = ROUTING) -> Config:
    return parse_config_text(HEAD + routing)


def facts_of(target: str, port: int, network: str) -> FlowFacts:
    ip, domain = parse_target(target)
    return FlowFacts(network, ip, port, domain=domain, inbound_tag="tproxy-in")  # type: ignore[arg-type]


def decide(router: Router, target: str, port: int, network: str, resolved: list[str] | None):  # type: ignore[no-untyped-def]
    ips = None if resolved is None else [ip_address(a) for a in resolved]
    return router.decide(facts_of(target, port, network), ips)


def sample_targets(sites: dict[str, list[DatDomain]], ranges: list[Ranges]) -> Iterator[str]:
    """Names from the lists the rules use (each kind, subdomains, near misses) and
    addresses inside, at the edges of and just outside the countries' ranges."""
    for name in NAMES:
        for domain in sites[name.upper()][::7]:
            if domain.kind in ("domain", "full"):
                yield domain.value
                yield "x1." + domain.value
                yield domain.value + "x"
            elif domain.kind == "keyword":
                yield f"a{domain.value}b.example"
    rng = random.Random(18)
    for family in ranges:
        for lo, hi in family[:: max(1, len(family) // 300)]:
            for value in (lo - 1, lo, (lo + hi) // 2, hi, hi + 1):
                if value >= 0:
                    yield str(ip_address(value if value < 1 << 32 or lo >= 1 << 32 else lo))
    for _ in range(300):
        yield str(ipaddress.IPv4Address(rng.getrandbits(32)))
        yield str(ipaddress.IPv6Address(rng.getrandbits(128)))


def test_the_table_decides_as_expected_from_both_sources(source: Source) -> None:
    cfg = config()
    lists = compile_router(cfg, source.lists())
    dats = compile_router(cfg, source.dats())
    small = source.mmdb != SHIPPED_MMDB
    for target, port, network, resolved, expected in CASES:
        from_lists = decide(lists, target, port, network, resolved)
        assert decide(dats, target, port, network, resolved) == from_lists, target
        if small:  # the expectations are about the small database's countries
            assert from_lists.outbound == expected, (target, port, network, resolved)


def test_sampled_targets_decide_the_same(
    source: Source, shipped_sites: dict[str, list[DatDomain]]
) -> None:
    cfg = config()
    lists = compile_router(cfg, source.lists())
    dats = compile_router(cfg, source.dats())
    found = CountryDB(source.mmdb).extract(set(CODES))
    ranges = [r for code in CODES for r in found[code]]
    count = 0
    outcomes = set()
    for target in sample_targets(shipped_sites, ranges):
        for port, network in ((443, "tcp"), (53, "udp")):
            for resolved in (None, ["1.0.1.5"], ["1.1.1.1", "8.8.8.8"]):
                expected = decide(lists, target, port, network, resolved)
                assert decide(dats, target, port, network, resolved) == expected, target
                outcomes.add(getattr(expected, "rule_index", "resolve"))
                count += 1
    assert count > 10_000
    assert outcomes == {None, 0, 1, 2, 3, 4, 5, 6, "resolve"}  # every rule was exercised


def test_match_explains_which_dat_list_matched(source: Source) -> None:
    router = compile_router(config(), source.dats())
    text = render_text(explain(router, facts_of("www.google.cn", 443, "tcp")))
    assert f"(geosite:google@cn, list GOOGLE of {source.geosite_dat})" in text
    text = render_text(explain(router, facts_of("1.0.1.5", 443, "tcp")))
    assert f"ip 1.0.1.5 matched geoip:cn (list CN of {source.geoip_dat})" in text
    # this geoip.dat has no PRIVATE: the built-in list, and no .dat named
    text = render_text(explain(router, facts_of("10.0.0.1", 443, "tcp")))
    assert "ip 10.0.0.1 matched geoip:private\n" in text + "\n"


def test_geoip_private_comes_from_the_dat_when_it_has_one(tmp_path: Path) -> None:
    geoip_dat = tmp_path / "geoip.dat"
    geoip_dat.write_bytes(encode_geoip_dat({"PRIVATE": [ipaddress.ip_network("10.0.0.0/8")]}))
    geo = GeoData(NOWHERE, NOWHERE, geoip_dat=geoip_dat)
    routing = '[[routing.rules]]\nip = ["geoip:private"]\noutbound = "direct"\n'
    router = compile_router(config(routing), geo)
    assert decide(router, "10.1.2.3", 80, "tcp", None).outbound == "direct"
    assert decide(router, "192.168.1.1", 80, "tcp", None).outbound == "fallback"
    text = render_text(explain(router, facts_of("10.1.2.3", 80, "tcp")))
    assert f"matched geoip:private (list PRIVATE of {geoip_dat})" in text


# --- ext: and ext-ip: ----------------------------------------------------------------

MY_SITES = {
    "MYSITES": [
        DatDomain("domain", "ads.example", frozenset({"ads"})),
        DatDomain("full", "www.example.org", NONE),
        DatDomain("keyword", "tracker", frozenset({"ads", "cn"})),
        DatDomain("regexp", r"^cdn\d+\.example\.net$", NONE),
        DatDomain("domain", "Upper.Example", NONE),  # values are matched lower-case
    ],
    "OTHER": [DatDomain("domain", "other.example", NONE)],
}
MY_IPS = {
    "LAN": [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8")],
    "OFFICE": [ipaddress.ip_network("203.0.113.0/24")],
}
EXT_ROUTING = """
[[routing.rules]]
domain = ["ext:my.dat:mysites@ads"]
outbound = "block"
[[routing.rules]]
domain = ["ext:my.dat:MySites", "ext-domain:{absolute}:other"]
outbound = "proxy"
[[routing.rules]]
ip = ["ext-ip:myip.dat:lan", "ext:{absolute_ip}:office"]
outbound = "direct"
[[routing.rules]]
ip = ["ext:myip.dat:!lan"]
network = "udp"
outbound = "block"
[[routing.rules]]
source = ["ext-ip:myip.dat:office"]
outbound = "proxy"
"""


@pytest.fixture
def ext_geo(tmp_path: Path) -> tuple[GeoData, Config, dict[str, Path]]:
    """geosite_dat in sites/, geoip_dat in ips/: ext: reads from the first, ext-ip: from
    the second; absolute names from anywhere."""
    sites, ips, elsewhere = tmp_path / "sites", tmp_path / "ips", tmp_path / "elsewhere"
    for d in (sites, ips, elsewhere):
        d.mkdir()
    (sites / "geosite.dat").write_bytes(encode_geosite_dat({}))
    (sites / "my.dat").write_bytes(encode_geosite_dat(MY_SITES))
    (ips / "geoip.dat").write_bytes(encode_geoip_dat({}))
    (ips / "myip.dat").write_bytes(encode_geoip_dat(MY_IPS))
    (elsewhere / "abs.dat").write_bytes(encode_geosite_dat(MY_SITES))
    (elsewhere / "absip.dat").write_bytes(encode_geoip_dat(MY_IPS))
    geo = GeoData(NOWHERE, NOWHERE, geosite_dat=sites / "geosite.dat", geoip_dat=ips / "geoip.dat")
    routing = EXT_ROUTING.format(
        absolute=elsewhere / "abs.dat", absolute_ip=elsewhere / "absip.dat"
    )
    files = {"my": sites / "my.dat", "myip": ips / "myip.dat", "abs": elsewhere / "abs.dat"}
    return geo, config(routing), files


@pytest.mark.parametrize(
    ("target", "network", "source_ip", "expected"),
    [
        ("a.ads.example", "tcp", None, "block"),  # @ads
        ("my-tracker.example", "tcp", None, "block"),  # keyword @ads
        ("www.example.org", "tcp", None, "proxy"),  # no @ads: rule 1
        ("a.www.example.org", "tcp", None, "fallback"),  # full: not a subdomain
        ("cdn12.example.net", "tcp", None, "proxy"),  # regexp
        ("x.upper.example", "tcp", None, "proxy"),
        ("b.other.example", "tcp", None, "proxy"),  # ext-domain:, absolute
        ("10.9.8.7", "tcp", None, "direct"),  # ext-ip:
        ("fd00::7", "udp", None, "direct"),
        ("203.0.113.9", "tcp", None, "direct"),  # ext:, absolute
        ("8.8.8.8", "udp", None, "block"),  # ext:FILE:!TAG
        ("8.8.8.8", "tcp", "203.0.113.5", "proxy"),  # source
        ("8.8.8.8", "tcp", "192.0.2.1", "fallback"),
    ],
)
def test_ext_names(
    ext_geo: tuple[GeoData, Config, dict[str, Path]],
    target: str,
    network: str,
    source_ip: str | None,
    expected: str,
) -> None:
    geo, cfg, _ = ext_geo
    router = compile_router(cfg, geo)
    ip, domain = parse_target(target)
    src = None if source_ip is None else ip_address(source_ip)
    facts = FlowFacts(network, ip, 443, domain=domain, src_ip=src)  # type: ignore[arg-type]
    assert router.decide(facts, []).outbound == expected  # type: ignore[union-attr]


def test_ext_explanations_name_list_and_file(
    ext_geo: tuple[GeoData, Config, dict[str, Path]],
) -> None:
    geo, cfg, files = ext_geo
    router = compile_router(cfg, geo)
    text = render_text(explain(router, facts_of("a.ads.example", 443, "tcp")))
    assert f'"domain:ads.example" (ext:my.dat:mysites@ads, list MYSITES of {files["my"]})' in text
    text = render_text(explain(router, facts_of("10.0.0.1", 443, "tcp")))
    assert f"matched ext-ip:myip.dat:lan (list LAN of {files['myip']})" in text


def test_ext_file_without_dat_settings_is_relative_to_the_base(tmp_path: Path) -> None:
    (tmp_path / "my.dat").write_bytes(encode_geosite_dat(MY_SITES))
    geo = GeoData(NOWHERE, NOWHERE, base_dir=tmp_path)
    routing = '[[routing.rules]]\ndomain = ["ext:my.dat:other"]\noutbound = "proxy"\n'
    router = compile_router(config(routing), geo)
    assert decide(router, "other.example", 443, "tcp", None).outbound == "proxy"


# --- bad files: check errors naming the file and the rule's path ---------------------


def write_config(tmp_path: Path, geodata: str, routing: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(HEAD + "[geodata]\n" + geodata + routing)
    return str(path)


GOOD_SITES = encode_geosite_dat(
    {"CN": [DatDomain("domain", "baidu.com", NONE), DatDomain("full", "www.qq.com", NONE)]}
)
GOOD_IPS = encode_geoip_dat({"CN": [ipaddress.ip_network("1.0.1.0/24")]})
BAD_ROUTING = """
[[routing.rules]]
domain = ["full:ok.example", "geosite:cn"]
outbound = "direct"
[[routing.rules]]
ip = ["geoip:cn"]
outbound = "direct"
"""


def corrupt_type(data: bytes) -> bytes:
    """The full: domain's type (3) made 9: a well-framed file with a bad value."""
    at = data.index(b"\x08\x03\x12\x0awww.qq.com")
    return data[: at + 1] + b"\x09" + data[at + 2 :]


@pytest.mark.parametrize(
    ("sites", "ips", "errors"),
    [
        (GOOD_SITES[:-5], GOOD_IPS, ["geosite.dat: offset 0: field 1: truncated (35 bytes)"]),
        (corrupt_type(GOOD_SITES), GOOD_IPS, ["geosite.dat: offset 23: unknown domain type 9"]),
        (b"\xff" * 40, GOOD_IPS, ["geosite.dat: offset 0: varint longer than 10 bytes"]),
        (GOOD_SITES, GOOD_IPS[:-3], [None, "geoip.dat: offset 0: field 1: truncated (14 bytes)"]),
        (GOOD_SITES, b"\x0a\x05\x0a\x02CN\x12", [None, "geoip.dat: offset 7: truncated varint"]),
        (None, GOOD_IPS, ["geosite.dat: no such file"]),
        (
            encode_geosite_dat({"US": []}),
            GOOD_IPS,
            ["geosite.dat: no list 'CN' in this geosite file"],
        ),
        (GOOD_SITES, encode_geoip_dat({}), [None, "geoip.dat: no list 'CN' in this geoip file"]),
    ],
)
def test_bad_dat_files_are_check_errors(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    sites: bytes | None,
    ips: bytes,
    errors: list[str | None],
) -> None:
    if sites is not None:
        (tmp_path / "geosite.dat").write_bytes(sites)
    (tmp_path / "geoip.dat").write_bytes(ips)
    geodata = f'geosite_dat = "{tmp_path}/geosite.dat"\ngeoip_dat = "{tmp_path}/geoip.dat"\n'
    assert main(["check", write_config(tmp_path, geodata, BAD_ROUTING)]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(lines)
    paths = ["$.routing.rules[0].domain[1]", "$.routing.rules[1].ip[0]"]
    expected = [(m, p) for m, p in zip(errors, paths, strict=False) if m is not None]
    assert len(lines) == len(expected), lines
    for line, (message, path) in zip(lines, expected, strict=True):
        entry = "geosite:cn: " if message.startswith("geosite") else ""
        assert line == f"{entry}{tmp_path}/{message} @ {path}"


def test_bad_ext_files_are_check_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "geosite.dat").write_bytes(GOOD_SITES)
    (tmp_path / "cut.dat").write_bytes(encode_geoip_dat(MY_IPS)[:-4])
    routing = """
[[routing.rules]]
domain = ["ext:missing.dat:x"]
outbound = "direct"
[[routing.rules]]
ip = ["ext-ip:cut.dat:lan"]
outbound = "direct"
"""
    geodata = f'geosite_dat = "{tmp_path}/geosite.dat"\n'
    assert main(["check", write_config(tmp_path, geodata, routing)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines() == [
        f"ext:missing.dat:x: {tmp_path}/missing.dat: no such file @ $.routing.rules[0].domain[0]",
        f"{tmp_path}/cut.dat: offset 39: field 1: truncated (18 bytes) @ $.routing.rules[1].ip[0]",
    ]
    dns = """
[[routing.rules]]
domain = ["ext:geosite.dat:cn"]
outbound = "direct"
[[dns.servers]]
address = "192.0.2.53"
domains = ["ext:geosite.dat:nosuch"]
"""
    assert main(["check", write_config(tmp_path, geodata, dns)]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [
        f"ext:geosite.dat:nosuch: {tmp_path}/geosite.dat: no list 'NOSUCH' in this geosite file"
        " @ $.dns.servers[0].domains[0]",
    ]


def test_check_accepts_dat_geodata_without_a_notice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "geosite.dat").write_bytes(GOOD_SITES)
    (tmp_path / "geoip.dat").write_bytes(GOOD_IPS)
    geodata = f'geosite_dat = "{tmp_path}/geosite.dat"\ngeoip_dat = "{tmp_path}/geoip.dat"\n'
    path = write_config(tmp_path, geodata, BAD_ROUTING)
    assert main(["check", path]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    assert "ok:" in out.out
    assert not_yet_in_effect(parse_config_text(Path(path).read_text())) == []
    assert main(["match", "www.qq.com", "-c", path]) == 0
    assert f"(geosite:cn, list CN of {tmp_path}/geosite.dat)" in capsys.readouterr().out
    assert main(["match", "1.0.1.1", "-c", path, "--json"]) == 0
    reasons = json.loads(capsys.readouterr().out)["reasons"]
    assert reasons == [f"ip 1.0.1.1 matched geoip:cn (list CN of {tmp_path}/geoip.dat)"]


def test_unread_entries_are_not_decoded(tmp_path: Path) -> None:
    """Like v2ray, only the lists named are decoded: a bad list nobody names is no error
    (the file's framing is always checked: see the truncation cases above)."""
    data = GOOD_SITES + encode_geosite_dat({"BROKEN": [DatDomain("full", "x.example", NONE)]})
    broken = data.replace(b"\x08\x03\x12\x09x.example", b"\x08\x07\x12\x09x.example")
    (tmp_path / "geosite.dat").write_bytes(broken)
    geo = GeoData(NOWHERE, NOWHERE, geosite_dat=tmp_path / "geosite.dat")
    router = compile_router(
        config('[[routing.rules]]\ndomain = "geosite:cn"\noutbound = "block"'), geo
    )
    assert decide(router, "baidu.com", 443, "tcp", None).outbound == "block"


# --- the compile cache -----------------------------------------------------------------


def entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("router-*.pickle"))


def forbid_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_build(*args: object) -> None:
        raise AssertionError("compiled again despite a cache entry")

    monkeypatch.setattr(compile_module, "_build_index", no_build)


CACHED_ROUTING = """
[[routing.rules]]
domain = ["geosite:cn"]
outbound = "direct"
[[routing.rules]]
domain = ["ext:my.dat:mysites"]
outbound = "proxy"
[[routing.rules]]
ip = ["geoip:cn", "ext-ip:myip.dat:office"]
outbound = "block"
"""


@pytest.mark.parametrize(
    ("file", "content", "target", "before", "after"),
    [
        ("geosite.dat", {"CN": [DatDomain("domain", "new.example", NONE)]},
         "new.example", "fallback", "direct"),
        ("my.dat", {"MYSITES": [DatDomain("full", "new.example", NONE)]},
         "new.example", "fallback", "proxy"),
        ("geoip.dat", {"CN": [ipaddress.ip_network("192.0.2.0/24")]},
         "192.0.2.1", "fallback", "block"),
        ("myip.dat", {"OFFICE": [ipaddress.ip_network("192.0.2.0/24")]},
         "192.0.2.1", "fallback", "block"),
    ],
)  # fmt: skip
def test_the_compile_cache_sees_a_changed_dat(  # noqa: PLR0917
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    file: str,
    content: dict[str, list[object]],
    target: str,
    before: str,
    after: str,
) -> None:
    for name, data in (("geosite.dat", GOOD_SITES), ("geoip.dat", GOOD_IPS),
                       ("my.dat", encode_geosite_dat(MY_SITES)),
                       ("myip.dat", encode_geoip_dat(MY_IPS))):  # fmt: skip
        (tmp_path / name).write_bytes(data)

    def geo() -> GeoData:
        return GeoData(
            NOWHERE, NOWHERE, geosite_dat=tmp_path / "geosite.dat", geoip_dat=tmp_path / "geoip.dat"
        )

    cfg = config(CACHED_ROUTING)
    cache = RouterCache(tmp_path / "cache", keep=10)
    fresh = compile_router(cfg, geo(), cache=cache)
    assert decide(fresh, target, 443, "tcp", None).outbound == before
    assert len(entries(cache.directory)) == 1
    with monkeypatch.context() as patch:
        forbid_compiling(patch)
        loaded = compile_router(cfg, geo(), cache=cache)  # unchanged: from the cache
        assert decide(loaded, target, 443, "tcp", None).outbound == before
        text = render_text(explain(loaded, facts_of("baidu.com", 443, "tcp")))
        assert f"list CN of {tmp_path}/geosite.dat" in text  # origins kept in the entry
    sites = file in ("geosite.dat", "my.dat")
    encode = encode_geosite_dat if sites else encode_geoip_dat
    (tmp_path / file).write_bytes(encode(content))  # type: ignore[arg-type]
    router = compile_router(cfg, geo(), cache=cache)
    assert decide(router, target, 443, "tcp", None).outbound == after
    assert len(entries(cache.directory)) == 2


def test_a_cached_dat_compile_reads_no_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: Source
) -> None:
    cache = RouterCache(tmp_path / "cache")
    cfg = config()
    expected = [decide(compile_router(cfg, source.dats(), cache=cache), *c[:4]) for c in CASES]
    forbid_compiling(monkeypatch)
    geo = source.dats()
    loaded = compile_router(cfg, geo, cache=cache)
    assert [decide(loaded, *c[:4]) for c in CASES] == expected
    assert geo._dats._sites == {}
