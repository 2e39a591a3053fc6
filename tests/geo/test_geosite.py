"""domain-list-community parsing and list resolution."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_tproxy.geo.geosite import (
    GeositeError,
    GeositeLoader,
    parse_geosite_text,
    valid_list_name,
)

RulesDir = Callable[[dict[str, str]], Path]
REPO_RULES = Path(__file__).resolve().parents[2] / "rules"
# CI clones the repository with shared/ beside it.
SHARED_DLC = Path(__file__).resolve().parents[3] / "shared/data/domain-list-community/data"


def rules(text: str) -> list[tuple[str, str, frozenset[str], int]]:
    parsed = parse_geosite_text(text, "t", "rules/t")
    return [(r.kind, r.value, r.attrs, r.line) for r in parsed.rules]


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("google.com", ("domain", "google.com", frozenset())),
        ("Google.COM", ("domain", "google.com", frozenset())),
        ("domain:google.com", ("domain", "google.com", frozenset())),
        ("DOMAIN:google.com", ("domain", "google.com", frozenset())),
        ("full:www.google.com", ("full", "www.google.com", frozenset())),
        ("keyword:goo", ("keyword", "goo", frozenset())),
        (r"regexp:^ads?\.Example$", ("regexp", r"^ads?\.Example$", frozenset())),
        ("ad.com @ads", ("domain", "ad.com", frozenset({"ads"}))),
        ("ad.com @ads @!cn", ("domain", "ad.com", frozenset({"ads", "!cn"}))),
        ("ad.com\t@ADS   # trailing comment", ("domain", "ad.com", frozenset({"ads"}))),
        ("xn--fiqs8s", ("domain", "xn--fiqs8s", frozenset())),
        ("a-b.c-d.com", ("domain", "a-b.c-d.com", frozenset())),
    ],
)
def test_rule_lines(line: str, expected: tuple[str, str, frozenset[str]]) -> None:
    assert rules(line) == [(*expected, 1)]


def test_comments_blank_lines_and_line_numbers() -> None:
    text = "# header\n\nfoo.com # why\n   \n  # indented comment\nbar.com\n"
    assert [(v, n) for _, v, _, n in rules(text)] == [("foo.com", 3), ("bar.com", 6)]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("foo_bar.com", "only a-z"),
        ("-foo.com", "bad label"),
        ("foo-.com", "bad label"),
        ("a..b.com", "bad label"),
        (".com", "bad label"),
        ("full:", "empty value"),
        ("x" * 64 + ".com", "bad label"),
        (".".join(["a" * 60] * 5), "longer than 253"),
        ("regexp:(", "bad regexp"),
        ("regex:foo", "unknown rule type"),
        ("ext:foo:bar", "unknown rule type"),
        ("foo.com ads", "bad attribute or affiliation"),
        ("foo.com @", "bad attribute or affiliation"),
        ("foo.com &", "bad attribute or affiliation"),
        ("foo.com &../x", "bad attribute or affiliation"),
        ("include:../etc", "bad list name"),
        ("include:foo ads", "bad include filter"),
    ],
)
def test_bad_lines_are_reported_with_file_and_line(line: str, message: str) -> None:
    with pytest.raises(GeositeError) as info:
        parse_geosite_text(f"ok.com\n{line}\n", "t", "rules/t")
    (problem,) = info.value.problems
    assert problem.startswith("rules/t:2: ")
    assert message in problem


def test_every_bad_line_of_a_file_is_reported() -> None:
    with pytest.raises(GeositeError) as info:
        parse_geosite_text("a_b.com\nok.com\nc_d.com\n", "t", "rules/t")
    assert [p.split(":")[1] for p in info.value.problems] == ["1", "3"]


def test_includes_with_attribute_filters(rules_dir: RulesDir) -> None:
    d = rules_dir(
        {
            "google": "google.com\nwww.google.cn @cn\nads.google.com @ads\ncn-ads.google.cn @cn @ads",
            "only-cn": "include:google @cn",
            "cn-no-ads": "include:google @cn @-ads",
            "no-ads": "include:GOOGLE @-ads",
            "all": "include:google\ninclude:only-cn",
        }
    )
    loader = GeositeLoader(d)

    def values(name: str) -> list[str]:
        return [r.value for r in loader.resolve(name)]

    assert values("only-cn") == ["www.google.cn", "cn-ads.google.cn"]
    assert values("cn-no-ads") == ["www.google.cn"]
    assert values("no-ads") == ["google.com", "www.google.cn"]
    assert values("all") == [  # the same rule twice is kept once
        "google.com", "www.google.cn", "ads.google.com", "cn-ads.google.cn",
    ]  # fmt: skip
    assert values("ALL") == values("all")  # list names are case-insensitive


def test_locations_point_at_the_defining_file(rules_dir: RulesDir) -> None:
    d = rules_dir({"a": "include:b\nx.com", "b": "# b\n\ny.com"})
    assert [r.location for r in GeositeLoader(d).resolve("a")] == [
        f"{d}/a:2", f"{d}/b:3",
    ]  # fmt: skip


def test_affiliations_add_rules_to_other_lists(rules_dir: RulesDir) -> None:
    d = rules_dir(
        {
            "steam": "steampowered.com &games &category-games-cn @cn",
            "games": "epicgames.com",
            "uses-games": "include:games @cn",
        }
    )
    loader = GeositeLoader(d)
    assert {r.value for r in loader.resolve("games")} == {"epicgames.com", "steampowered.com"}
    assert [r.value for r in loader.resolve("category-games-cn")] == ["steampowered.com"]
    assert [r.value for r in loader.resolve("uses-games")] == ["steampowered.com"]
    assert [r.value for r in loader.resolve("steam")] == ["steampowered.com"]


def test_include_cycle_is_an_error(rules_dir: RulesDir) -> None:
    d = rules_dir({"a": "include:b\na.com", "b": "b.com\ninclude:c", "c": "include:a"})
    with pytest.raises(GeositeError, match=r"c:1: include cycle: a -> b -> c -> a"):
        GeositeLoader(d).resolve("a")
    d = rules_dir({"self": "include:self"})
    with pytest.raises(GeositeError, match="include cycle: self -> self"):
        GeositeLoader(d).resolve("self")


def test_missing_list_and_missing_include(rules_dir: RulesDir) -> None:
    d = rules_dir({"a": "a.com\ninclude:nosuch"})
    loader = GeositeLoader(d)
    with pytest.raises(GeositeError, match=r"a:2: include:nosuch: no such list"):
        loader.resolve("a")
    with pytest.raises(GeositeError, match="no list 'other'"):
        loader.resolve("other")
    with pytest.raises(GeositeError, match="no list"):
        loader.resolve("../a")


def test_only_referenced_lists_are_parsed(rules_dir: RulesDir) -> None:
    d = rules_dir({"a": "include:b", "b": "b.com", "broken": "bad_line"})
    loader = GeositeLoader(d)
    assert [r.value for r in loader.resolve("a")] == ["b.com"]
    with pytest.raises(GeositeError, match="broken:1"):
        loader.resolve("broken")


def test_files_that_are_not_lists_are_ignored(rules_dir: RulesDir) -> None:
    d = rules_dir({"a": "a.com"})
    (d / "README.md").write_text("# see & read\nnot a & list\n")
    (d / "update.py").write_text("x = a & b\n")
    assert [r.value for r in GeositeLoader(d).resolve("a")] == ["a.com"]


@pytest.mark.parametrize("directory", [REPO_RULES, SHARED_DLC], ids=["rules", "shared-dlc"])
def test_real_lists_all_parse(directory: Path) -> None:
    if not directory.is_dir():
        pytest.skip(f"{directory} is not here")
    loader = GeositeLoader(directory)
    names = sorted(p.name for p in directory.iterdir() if valid_list_name(p.name))
    assert len(names) > 100
    for name in names:
        assert loader.resolve(name), name


def test_shipped_rules_have_the_lists_a_config_needs() -> None:
    loader = GeositeLoader(REPO_RULES)
    began = time.process_time()
    sizes = {n: len(loader.resolve(n)) for n in ("cn", "geolocation-!cn", "category-ads-all")}
    assert time.process_time() - began < 2.0
    assert sizes["cn"] > 5000 and sizes["geolocation-!cn"] > 20000
    assert sizes["category-ads-all"] > 500
    assert any(r.kind == "regexp" for r in loader.resolve("private"))
    assert (REPO_RULES / "LICENSE").is_file() and (REPO_RULES / "README.md").is_file()


_token = st.text(st.sampled_from("abcz09.-_:@&#!/ \tAZ\\^$()[]+*?"), max_size=12)


@given(st.lists(_token, max_size=6).map(" ".join))
def test_line_parser_raises_only_its_own_error(line: str) -> None:
    try:
        parsed = parse_geosite_text(line, "t", "rules/t")
    except GeositeError as exc:
        assert all(p.startswith("rules/t:") for p in exc.problems)
        return
    for rule in parsed.rules:
        assert rule.kind in ("domain", "full", "keyword", "regexp")
        assert rule.value == rule.value.strip() and rule.value


@given(st.text(max_size=80))
def test_arbitrary_text_raises_only_its_own_error(text: str) -> None:
    with contextlib.suppress(GeositeError):
        parse_geosite_text(text, "t", "rules/t")
