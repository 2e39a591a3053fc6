"""Domain matching: v2ray semantics, the shared index, best-match order, regexp keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from trio_tproxy.config import ConfigErrors
from trio_tproxy.geo import GeoData, GeositeRule
from trio_tproxy.geo.geosite import GeositeLoader
from trio_tproxy.route import DomainMatcher, build_domain_matcher, normalize_domain
from trio_tproxy.route.domain import DomainIndexBuilder
from trio_tproxy.route.regexkeys import regexp_key, regexp_prefilter

REPO_RULES = Path(__file__).resolve().parents[2] / "rules"


def matcher(geo: GeoData, *entries: str) -> DomainMatcher:
    return build_domain_matcher(list(entries), geo, "$.test")


# (entry, domain, matches): v2ray strmatcher semantics, reference section 3.
CASES = [
    ("full:google.com", "google.com", True),
    ("full:google.com", "www.google.com", False),
    ("full:Google.COM.", "google.com", True),  # entries normalised like targets
    ("domain:google.com", "google.com", True),
    ("domain:google.com", "www.google.com", True),
    ("domain:google.com", "a.b.google.com", True),
    ("domain:google.com", "xgoogle.com", False),
    ("domain:google.com", "google.com.hk", False),
    ("domain:google.com", "a..google.com", True),  # the byte before is a dot
    ("domain:com", ".com", True),
    ("domain:com", "com", True),
    ("domain:.com", "a..com", True),  # v2ray: the pattern is taken literally
    ("domain:.com", "a.com", False),
    ("keyword:oogl", "www.google.com", True),
    ("keyword:OOGL", "www.google.com", True),
    ("keyword:goo", "gle.com", False),
    ("sina.com", "sina.com.cn", True),  # no prefix: substring
    ("sina.com", "www.sina.com", True),
    ("sina.com", "sina.cn", False),
    ("sina.com", "sinaxcom.cn", False),
    (r"regexp:^ads?\.", "ad.example.com", True),
    (r"regexp:^ads?\.", "ads.example.com", True),
    (r"regexp:^ads?\.", "bad.example.com", False),
    (r"regexp:\.cn$", "example.cn", True),
    ("regexp:EXAMPLE", "example.com", False),  # case-sensitive; targets are lower-case
    ("dotless:", "localhost", True),
    ("dotless:", "local.host", False),
    ("dotless:host", "localhost", True),
    ("dotless:host", "localhost.lan", False),
    ("geosite:google", "www.google.com", True),
    ("geosite:GOOGLE", "maps.google.com", True),
    ("geosite:google", "r12---sn-abc1.googlevideo.com", True),
    ("geosite:google", "pagead2.googlesyndication.com", True),
    ("geosite:google@cn", "www.google.cn", True),
    ("geosite:google@cn", "www.google.com", False),
    ("geosite:google@ads", "doubleclick.net", True),
    ("geosite:google@-ads", "doubleclick.net", False),
    ("geosite:google@-ads", "google.com", True),
    ("geosite:cn", "www.baidu.com", True),  # own rule
    ("geosite:cn", "x.anything.cn", True),  # include:tld-cn
    ("geosite:cn", "maps.googleapis.cn", True),  # include:google @cn
    ("geosite:cn", "www.google.com", False),
    ("geosite:games", "qq.com", True),  # cn affiliates qq.com to games
    ("geosite:private", "localhost", True),
    ("geosite:private", "nas", True),  # dotless regexp
    ("geosite:private", "nas.example", False),
]


@pytest.mark.parametrize(("entry", "domain", "expected"), CASES)
def test_entry_semantics(geo: GeoData, entry: str, domain: str, expected: bool) -> None:
    assert matcher(geo, entry).matches(normalize_domain(domain)) is expected


@pytest.mark.parametrize(
    ("raw", "normal"),
    [("WWW.Example.COM.", "www.example.com"), ("a..b.com", "a..b.com"), (".com", ".com")],
)
def test_normalize_domain(raw: str, normal: str) -> None:
    assert normalize_domain(raw) == normal


def test_best_match_order_for_dns_server_selection(geo: GeoData) -> None:
    m = matcher(
        geo, "regexp:google", "keyword:goo", "domain:google.com", "domain:www.google.com",
        "full:www.google.com",
    )  # fmt: skip
    best = m.best("www.google.com")
    assert best is not None and (best.kind, best.pattern) == ("full", "www.google.com")
    best = m.best("a.www.google.com")
    assert best is not None and (best.kind, best.pattern) == ("domain", "www.google.com")
    assert best.rank == (1, -len("www.google.com"))
    best = m.best("maps.google.com")
    assert best is not None and (best.kind, best.pattern) == ("domain", "google.com")
    best = m.best("goo.gl")
    assert best is not None and best.kind == "keyword" and best.rank == (2, 0)
    best = m.best("googlea.com")
    assert best is not None and best.kind == "keyword"
    assert m.best("example.com") is None
    ranks = sorted(b.rank for d in ("www.google.com", "x.google.com", "goo.gl") if (b := m.best(d)))
    assert [r[0] for r in ranks] == [0, 1, 2]


def test_best_match_names_list_file_and_line(geo: GeoData) -> None:
    best = matcher(geo, "geosite:cn").best("maps.googleapis.cn")
    assert best is not None
    assert best.source == "geosite:cn"
    assert best.location is not None and best.location.endswith("rules/google:4")
    assert str(best) == f'"domain:googleapis.cn" (geosite:cn, {best.location})'
    inline = matcher(geo, "keyword:shop").best("myshop.com")
    assert inline is not None and str(inline) == '"keyword:shop"' and inline.location is None


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("geosite:nosuch", "no list 'nosuch'"),
        ("dotless:a.b", "must not contain a dot"),
        ("regexp:(", "regexp:(:"),
        ("ext-ip:file.dat:list", "unknown domain entry prefix"),
        ("ext:nosuch.dat:list", "nosuch.dat: no such file"),
    ],
)
def test_entry_errors_name_their_path(geo: GeoData, entry: str, message: str) -> None:
    with pytest.raises(ConfigErrors) as info:
        build_domain_matcher(["full:ok.com", entry], geo, "$.dns.servers[1].domains")
    (error,) = info.value.errors
    assert error.path == "$.dns.servers[1].domains[1]"
    assert message in error.message


# -- the index against a brute-force reference ----------------------------------------------

_LABEL = st.text("abc0-", min_size=0, max_size=4)
_DOMAIN = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_RULE = st.tuples(st.sampled_from(["full", "domain", "keyword", "regexp"]), _DOMAIN)


def reference(kind: str, value: str, domain: str) -> bool:
    if kind == "full":
        return domain == value
    if kind == "domain":
        return domain == value or domain.endswith("." + value)
    if kind == "keyword":
        return value in domain
    return re.search(value, domain) is not None


def _rule(kind: str, value: str) -> GeositeRule:
    if kind == "regexp":
        value = re.escape(value).replace(r"\-", "-") + "$"
    return GeositeRule(kind, value, frozenset(), "", 0)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_RULE, max_size=6), min_size=1, max_size=4), st.lists(_DOMAIN, max_size=8))
def test_index_mask_equals_reference(
    groups: list[list[tuple[str, str]]], domains: list[str]
) -> None:
    builder = DomainIndexBuilder()
    for rules in groups:
        g = builder.new_group()
        for kind, value in rules:
            builder.add(g, _rule(kind, value), f"{kind}:{value}")
    index = builder.build()
    cached = builder.build(cache_size=4)
    for domain in domains + [v for rules in groups for _, v in rules]:
        expected = 0
        for g, rules in enumerate(groups):
            if any(reference(k, _rule(k, v).value, domain) for k, v in rules):
                expected |= 1 << g
        assert index.mask(domain) == expected, domain
        assert cached.mask(domain) == expected
        for g in range(len(groups)):
            assert (index.best(domain, g) is not None) == bool(expected >> g & 1)


# -- regexp keys never exclude a domain the regexp matches ----------------------------------

_PIECES = [
    "a", "b", "0", "-", r"\.", r"\.", "[a-c]", "[0-9]{1,2}", ".+", "(^|\\.)", "(a|b)", "a?",
    r"\d+", "[^.]", r"\w", "(ab|c\\.d)", "x*", "[.a]", "[+-/]", r"(\x2e)", r"[\x2e]",
    "(?:a|b)", "(?=a)", r"\b", "a{}", "b{,2}", "a{2}", "(?<=a)b", "(ab){1,2}", "[ab]{,3}", "a{,}",
]  # fmt: skip


@st.composite
def _patterns(draw: st.DrawFn) -> str:
    body = "".join(draw(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=8)))
    return ("^" if draw(st.booleans()) else "") + body + ("$" if draw(st.booleans()) else "")


def _index_for(pattern: str) -> DomainMatcher:
    builder = DomainIndexBuilder()
    g = builder.new_group()
    builder.add(g, GeositeRule("regexp", pattern, frozenset(), "", 0), pattern)
    return DomainMatcher(builder.build(), g, (pattern,))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_patterns(), st.data())
def test_regexp_keys_are_sound(pattern: str, data: st.DataObject) -> None:
    m = _index_for(pattern)
    rx = re.compile(pattern)
    domains = [data.draw(_DOMAIN) for _ in range(5)]
    domains.append(data.draw(st.from_regex(rx).filter(lambda s: s.isascii())))
    for raw in domains:
        domain = normalize_domain(raw)  # as every target is (no trailing newline for "$")
        assert m.matches(domain) == bool(rx.search(domain)), (pattern, domain, regexp_key(pattern))


def test_real_regexps_keys_are_sound() -> None:
    loader = GeositeLoader(REPO_RULES)
    patterns = sorted(
        {r.value for n in ("cn", "geolocation-!cn", "category-ads-all", "private")
         for r in loader.resolve(n) if r.kind == "regexp"}
    )  # fmt: skip
    assert len(patterns) > 150
    keyed = [p for p in patterns if regexp_key(p) is not None]
    assert len(keyed) > 0.9 * len(patterns)

    @settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.sampled_from(patterns), st.data())
    def check(pattern: str, data: st.DataObject) -> None:
        domain = normalize_domain(data.draw(st.from_regex(pattern, fullmatch=True)))
        assume(re.search(pattern, domain))
        assert _index_for(pattern).matches(domain), (pattern, domain)

    check()


@pytest.mark.parametrize(
    ("pattern", "key"),
    [
        (r"(^|\.)aqdk[0-9]{3}\.com$", ("start", 2, "aqd")),
        (r"^ewcdn[0-9]+\.nowe\.com$", ("start", 2, "now")),
        (r"(^|\.)1[0-9]{2}\.one$", ("full", 1, "one")),
        (r".+\.dkr\.ecr\.[^\.]+\.amazonaws\.com$", ("start", 2, "ama")),
        (r"(^|\.)kpkuang\.(bond|fun)$", ("start", 2, "kpk")),
        (r"google", None),  # not anchored at the end
        (r"a|b\.com$", None),  # top-level alternation
        (r"(?i)x\.com$", None),  # inline flags
        (r"\x41\.com$", None),  # escapes it does not model
        (r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$", None),
        (r"(^|\.)xyz([+-/])com$", None),  # a range that spans "."
        (r"(^|\.)xyz(\x2e)com$", None),  # an escape that is a dot
        (r"(^|\.)xyz[\x2e]com$", None),
        (r"(^|\.)xyz(?:a|b)\.com$", ("start", 2, "xyz")),
    ],
)
def test_regexp_key_examples(pattern: str, key: tuple[str, int, str] | None) -> None:
    assert regexp_key(pattern) == key


def test_regexp_prefilter() -> None:
    assert regexp_prefilter(r".+\.awsdns-[0-9]\.(com|net)$") == ((".awsdns-", "."), False)
    assert regexp_prefilter(r"^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$") == ((), True)
    assert regexp_prefilter("a|b") == ((), False)


def test_a_built_index_keeps_no_rule_objects(geo: GeoData) -> None:
    """Origins are packed at build (an int per entry), not only in the disk cache: a DNS
    server's geosite list is never cached, and its parsed rules would stay alive."""
    m = matcher(geo, "geosite:google", "full:www.example.com")
    assert not any(
        isinstance(origin, tuple)
        for group in m.index._groups
        for table in (group.full, group.suffix, group.keywords, group.regexps)
        for origin in table.values()
    )
    best = m.best("maps.google.com")
    assert best is not None and best.source == "geosite:google"
    assert best.location is not None and re.search(r"/rules/google:\d+$", best.location)
    best = m.best("www.example.com")
    assert best is not None and (best.source, best.location) == ("full:www.example.com", None)
