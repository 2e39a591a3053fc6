"""The compile cache: a router loaded from it decides and explains exactly as a fresh one,
any change of what compilation read makes a new entry, and no cache problem is an error."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from ipaddress import ip_address
from pathlib import Path

import pytest

import trio_tproxy.route.compile as compile_module
import trio_tproxy.router_cache as cache_module
from trio_tproxy.cli import main
from trio_tproxy.config import Config, ConfigErrors
from trio_tproxy.geo import GeoData
from trio_tproxy.route import FlowFacts, Router, compile_router, explain, parse_target, render_json
from trio_tproxy.router_cache import CACHE_ENV, RouterCache

from .conftest import LISTS, write_lists

ROUTING = """
[routing]
domain_strategy = "ip_if_non_match"
[[routing.rules]]
domain = ["geosite:ads", "keyword:tracker"]
outbound = "block"
[[routing.rules]]
domain = ["geosite:cn", "regexp:\\\\.cn$"]
outbound = "direct"
[[routing.rules]]
domain = ["geosite:google@-cn", "full:exact.example.org"]
port = "443"
outbound = "proxy"
[[routing.rules]]
ip = ["geoip:cn", "geoip:private"]
outbound = "direct"
[[routing.rules]]
domain = ["geosite:private", "geosite:games"]
outbound = "block"
"""

CN, US = ip_address("1.0.1.1"), ip_address("8.8.8.8")
TARGETS = [
    "www.google.com", "r12---sn-ab5l6n7s.googlevideo.com", "pagead.doubleclick.net",
    "www.google.cn", "maps.googleapis.cn", "ad.example.com", "my.tracker.net", "baidu.com",
    "x.qq.com", "foo.cn", "store.steampowered.com", "localhost", "router", "exact.example.org",
    "a.exact.example.org", "example.net", "1.0.1.7", "8.8.8.8", "10.1.2.3", "2400:3200::1",
]  # fmt: skip


@pytest.fixture(autouse=True)
def no_racy_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests write their lists just before compiling: keep entries of fresh inputs (one
    test puts the wait back)."""
    monkeypatch.setattr(cache_module, "RACY_NS", 0)


@pytest.fixture
def geodata(tmp_path: Path, geodata_dir: Path) -> tuple[Path, Path]:
    """A rules directory of this test's own (tests edit it) and the shared database."""
    return write_lists(tmp_path / "rules", LISTS), geodata_dir / "country.mmdb"


@pytest.fixture
def cfg(make_config: Callable[[str], Config]) -> Config:
    return make_config(ROUTING)


def answers(router: Router) -> list[object]:
    """Every target's decision and explanation, on ports 443 and 80."""
    out: list[object] = []  # (ip_if_non_match: NeedIps without, then with addresses)
    for target in TARGETS:
        ip, domain = parse_target(target)
        for port in (443, 80):
            facts = FlowFacts("tcp", ip, port, domain=domain, inbound_tag="tproxy-in")
            for resolved in (None, [CN]):
                decision = router.decide(facts, resolved)
                out.append((decision, render_json(explain(router, facts, resolved))))
    return out


def outbound(router: Router, name: str, port: int = 80) -> str:
    """Where a flow to ``name`` goes (resolving to a US address if IP rules must see one)."""
    decision = router.decide(FlowFacts("tcp", None, port, domain=name), [US])
    return decision.outbound  # type: ignore[union-attr]


def forbid_compiling(monkeypatch: pytest.MonkeyPatch) -> None:
    """From here on a compile must come from the cache."""

    def no_build(*args: object) -> None:
        raise AssertionError("compiled again despite a cache entry")

    monkeypatch.setattr(compile_module, "_build_index", no_build)


def entries(directory: Path) -> list[Path]:
    return sorted(directory.glob("router-*.pickle"))


def test_a_cached_router_decides_and_explains_as_a_fresh_one(
    tmp_path: Path, geodata: tuple[Path, Path], cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = RouterCache(tmp_path / "cache")
    fresh = compile_router(cfg, GeoData(*geodata), cache=cache)
    assert len(entries(cache.directory)) == 1
    uncached = answers(compile_router(cfg, GeoData(*geodata)))
    assert answers(fresh) == uncached
    forbid_compiling(monkeypatch)
    geo = GeoData(*geodata)
    loaded = compile_router(cfg, geo, cache=cache)
    assert geo._db is None  # geoip:cn came from the entry: the database was not even opened
    assert answers(loaded) == uncached
    assert "rules/google:2" in json.dumps([e for _, e in answers(loaded)])  # locations kept


def test_a_cached_router_unpacks_its_explanations_only_to_explain(
    tmp_path: Path, geodata: tuple[Path, Path], cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The entries behind explanations (most of a big router's memory) stay one
    compressed blob in a router that only decides, as a running gateway's does."""
    cache = RouterCache(tmp_path / "cache")
    fresh = compile_router(cfg, GeoData(*geodata), cache=cache)
    assert fresh.domains._groups is None  # stored in the cache: packed up, here as well
    forbid_compiling(monkeypatch)
    loaded = compile_router(cfg, GeoData(*geodata), cache=cache)
    facts = FlowFacts("tcp", None, 443, domain="www.google.com", inbound_tag="tproxy-in")
    assert loaded.decide(facts, [US]).outbound == "proxy"  # type: ignore[union-attr]
    assert loaded.domains._groups is None
    assert "rules/google:2" in json.dumps(render_json(explain(loaded, facts, [US])))
    assert loaded.domains._groups is not None
    assert answers(loaded) == answers(fresh)


def test_an_edited_list_is_seen(tmp_path: Path, geodata: tuple[Path, Path], cfg: Config) -> None:
    cache = RouterCache(tmp_path / "cache")
    assert (
        outbound(compile_router(cfg, GeoData(*geodata), cache=cache), "new.example", 443)
        == "direct"
    )
    with (geodata[0] / "google").open("a") as f:
        f.write("new.example\n")
    router = compile_router(cfg, GeoData(*geodata), cache=cache)
    assert outbound(router, "new.example", 443) == "proxy"
    assert len(entries(cache.directory)) == 2


def test_a_new_list_file_is_seen(tmp_path: Path, geodata: tuple[Path, Path], cfg: Config) -> None:
    """A file no rule names can still add to a list: `&games` affiliations."""
    cache = RouterCache(tmp_path / "cache")
    assert (
        outbound(compile_router(cfg, GeoData(*geodata), cache=cache), "epicgames.com") == "direct"
    )
    (geodata[0] / "epic").write_text("epicgames.com &games\n")
    assert outbound(compile_router(cfg, GeoData(*geodata), cache=cache), "epicgames.com") == "block"


def test_changed_rules_and_a_rebuilt_database_are_new_entries(
    tmp_path: Path, geodata: tuple[Path, Path], make_config: Callable[[str], Config]
) -> None:
    cache = RouterCache(tmp_path / "cache", keep=10)
    compile_router(make_config(ROUTING), GeoData(*geodata), cache=cache)
    changed = make_config(ROUTING.replace("keyword:tracker", "keyword:beacon"))
    router = compile_router(changed, GeoData(*geodata), cache=cache)
    assert outbound(router, "beacon.io") == "block"
    assert outbound(router, "tracker.io") == "direct"
    assert len(entries(cache.directory)) == 2
    mmdb = tmp_path / "copy.mmdb"
    shutil.copy(geodata[1], mmdb)
    compile_router(changed, GeoData(geodata[0], mmdb), cache=cache)
    assert len(entries(cache.directory)) == 3
    compile_router(changed, GeoData(geodata[0], mmdb), cache=cache)  # a hit: no new entry
    assert len(entries(cache.directory)) == 3


def test_a_corrupt_entry_is_recompiled_and_replaced(
    tmp_path: Path, geodata: tuple[Path, Path], cfg: Config
) -> None:
    cache = RouterCache(tmp_path / "cache")
    expected = answers(compile_router(cfg, GeoData(*geodata), cache=cache))
    (entry,) = entries(cache.directory)
    for garbage in (b"", b"\x80\x05not a pickle", entry.read_bytes()[:1000]):
        entry.write_bytes(garbage)
        assert answers(compile_router(cfg, GeoData(*geodata), cache=cache)) == expected
        assert entries(cache.directory) == [entry]
        assert entry.stat().st_size > 1000  # rewritten whole


@pytest.mark.parametrize("whose", ["directory", "entry", "owner"])
def test_entries_others_could_have_written_are_not_loaded(
    tmp_path: Path, geodata: tuple[Path, Path], cfg: Config, whose: str
) -> None:
    cache = RouterCache(tmp_path / "cache")
    compile_router(cfg, GeoData(*geodata), cache=cache)
    (entry,) = entries(cache.directory)
    if whose == "directory":
        cache.directory.chmod(0o777)
    elif whose == "entry":
        entry.chmod(0o666)
    else:
        if os.geteuid() != 0:
            pytest.skip("needs root to give a file away")
        os.chown(entry, 65534, 65534)
    assert cache.load(entry.name.removeprefix("router-").removesuffix(".pickle")) is None
    # ... and compiling still works (from scratch)
    assert (
        outbound(compile_router(cfg, GeoData(*geodata), cache=cache), "www.google.com", 443)
        == "proxy"
    )


def test_an_unusable_cache_directory_is_not_an_error(
    tmp_path: Path, geodata: tuple[Path, Path], cfg: Config
) -> None:
    (tmp_path / "file").write_text("not a directory")
    for directory in (tmp_path / "file", tmp_path / "file" / "below"):
        router = compile_router(cfg, GeoData(*geodata), cache=RouterCache(directory))
        assert outbound(router, "baidu.com") == "direct"


def test_configurations_with_errors_are_not_cached(
    tmp_path: Path, geodata: tuple[Path, Path], make_config: Callable[[str], Config]
) -> None:
    cache = RouterCache(tmp_path / "cache")
    bad = make_config(ROUTING.replace("geoip:cn", "geoip:zz"))
    for _ in range(2):
        with pytest.raises(ConfigErrors, match="'ZZ' is not in"):
            compile_router(bad, GeoData(*geodata), cache=cache)
    assert entries(cache.directory) == []


def test_check_compiles_afresh_and_keeps_the_result(
    tmp_path: Path, geodata: tuple[Path, Path], cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = RouterCache(tmp_path / "cache", write_only=True)
    compile_router(cfg, GeoData(*geodata), cache=writer)
    (entry,) = entries(writer.directory)
    entry.write_bytes(b"garbage a reader would notice")
    compile_router(cfg, GeoData(*geodata), cache=writer)  # not read, so rewritten
    assert entry.stat().st_size > 1000
    forbid_compiling(monkeypatch)
    router = compile_router(cfg, GeoData(*geodata), cache=RouterCache(writer.directory))
    assert outbound(router, "www.google.com", 443) == "proxy"


def test_inputs_changed_just_now_are_not_kept(
    tmp_path: Path, geodata: tuple[Path, Path], cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system with coarse timestamps a second edit within the same tick would
    leave the stamp as it was: an entry is kept only once its inputs are 2 s old."""
    monkeypatch.setattr(cache_module, "RACY_NS", 2_000_000_000)
    cache = RouterCache(tmp_path / "cache")
    assert outbound(compile_router(cfg, GeoData(*geodata), cache=cache), "baidu.com") == "direct"
    assert entries(cache.directory) == []
    monkeypatch.setattr(cache_module, "RACY_NS", 0)
    compile_router(cfg, GeoData(*geodata), cache=cache)
    assert len(entries(cache.directory)) == 1


def test_a_same_size_edit_and_a_chmod_are_seen(
    tmp_path: Path, geodata: tuple[Path, Path], cfg: Config
) -> None:
    cache = RouterCache(tmp_path / "cache", keep=10)
    compile_router(cfg, GeoData(*geodata), cache=cache)
    games = geodata[0] / "games"
    games.write_text(games.read_text().replace("steampowered.com", "steampowered.org"))
    router = compile_router(cfg, GeoData(*geodata), cache=cache)
    assert outbound(router, "steampowered.org") == "block"
    assert outbound(router, "steampowered.com") == "direct"
    games.chmod(0o600)  # e.g. an unreadable file made readable: same size and mtime
    compile_router(cfg, GeoData(*geodata), cache=cache)
    assert len(entries(cache.directory)) == 3


def test_the_directory_as_spelled_is_part_of_the_entry(
    tmp_path: Path, geodata: tuple[Path, Path], cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Explanations name list files as the configuration spells the directory."""
    cache = RouterCache(tmp_path / "cache", keep=10)
    (tmp_path / "link").symlink_to(geodata[0])
    monkeypatch.chdir(tmp_path)
    facts = FlowFacts("tcp", None, 443, domain="www.google.com")
    for spelled in (geodata[0], Path("rules"), Path("link")):
        cached = compile_router(cfg, GeoData(spelled, geodata[1]), cache=cache)
        cached = compile_router(cfg, GeoData(spelled, geodata[1]), cache=cache)
        fresh = compile_router(cfg, GeoData(spelled, geodata[1]))
        assert render_json(explain(cached, facts)) == render_json(explain(fresh, facts))
        assert f"{spelled}/google:2" in json.dumps(render_json(explain(cached, facts)))
    assert len(entries(cache.directory)) == 3


def test_an_unlistable_rules_directory_is_never_cached(
    tmp_path: Path, geodata: tuple[Path, Path], cfg: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a listing an edit in place would go unseen (the directory's mtime stays)."""

    def refuse(path: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "scandir", refuse)
    cache = RouterCache(tmp_path / "cache")
    assert outbound(compile_router(cfg, GeoData(*geodata), cache=cache), "baidu.com") == "direct"
    monkeypatch.undo()
    assert not cache.directory.exists() or entries(cache.directory) == []


def test_a_change_of_decisive_rules_alone_is_a_new_entry(
    tmp_path: Path, geodata: tuple[Path, Path], make_config: Callable[[str], Config]
) -> None:
    """A rule that gains a port condition stops being decisive: the index must then look
    further (a later regexp group) than the cached one did."""
    routing = """
[[routing.rules]]
domain = ["domain:example.com"]{port}
outbound = "block"
[[routing.rules]]
domain = ["regexp:^www[.]example[.]com$"]
outbound = "proxy"
"""
    cache = RouterCache(tmp_path / "cache")
    decisive = make_config(routing.replace("{port}", ""))
    assert (
        outbound(compile_router(decisive, GeoData(*geodata), cache=cache), "www.example.com")
        == "block"
    )
    ported = make_config(routing.replace("{port}", '\nport = "443"'))
    router = compile_router(ported, GeoData(*geodata), cache=cache)
    assert outbound(router, "www.example.com", 80) == "proxy"
    assert outbound(router, "www.example.com", 443) == "block"


def test_entries_moved_between_rules_are_a_new_entry(
    tmp_path: Path, geodata: tuple[Path, Path], make_config: Callable[[str], Config]
) -> None:
    routing = """
[[routing.rules]]
domain = [{first}]
outbound = "block"
[[routing.rules]]
domain = [{second}]
outbound = "proxy"
"""
    cache = RouterCache(tmp_path / "cache")
    one = routing.format(first='"full:a.com", "full:b.com"', second='"full:c.com"')
    two = routing.format(first='"full:a.com"', second='"full:b.com", "full:c.com"')
    assert (
        outbound(compile_router(make_config(one), GeoData(*geodata), cache=cache), "b.com")
        == "block"
    )
    assert (
        outbound(compile_router(make_config(two), GeoData(*geodata), cache=cache), "b.com")
        == "proxy"
    )


def test_symlinks_in_place_of_the_cache_are_not_followed(
    tmp_path: Path, geodata: tuple[Path, Path], cfg: Config
) -> None:
    real = RouterCache(tmp_path / "real")
    compile_router(cfg, GeoData(*geodata), cache=real)
    (entry,) = entries(real.directory)
    key = entry.name.removeprefix("router-").removesuffix(".pickle")
    (tmp_path / "linked").symlink_to(real.directory)
    assert RouterCache(tmp_path / "linked").load(key) is None  # the directory a symlink
    RouterCache(tmp_path / "linked").store("x", {"a": 1})
    assert not (real.directory / "router-x.pickle").exists()
    other = RouterCache(tmp_path / "other")
    other.store("y", {"b": 2})
    (other.directory / f"router-{key}.pickle").symlink_to(entry)
    assert other.load(key) is None  # the entry a symlink
    assert other.load("y") == {"b": 2}


def test_only_the_newest_entries_are_kept(tmp_path: Path) -> None:
    cache = RouterCache(tmp_path / "cache", keep=2)
    for i, key in enumerate(["a", "b", "c"]):
        cache.store(key, {"n": i})
        os.utime(cache.directory / f"router-{key}.pickle", ns=(i * 10**9, i * 10**9))
    cache.store("d", {"n": 3})
    assert [p.name for p in entries(cache.directory)] == ["router-c.pickle", "router-d.pickle"]
    assert cache.load("c") == {"n": 2}
    assert cache.load("a") is None


def test_where_the_cache_lives(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for off in ("", "off", " off "):
        monkeypatch.setenv(CACHE_ENV, off)
        assert RouterCache.default() is None
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "here"))
    assert RouterCache.default().directory == tmp_path / "here"  # type: ignore[union-attr]
    assert RouterCache.default(write_only=True).write_only  # type: ignore[union-attr]
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert RouterCache.default().directory == tmp_path / "xdg" / "trio-tproxy"  # type: ignore[union-attr]
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert RouterCache.default().directory == tmp_path / "home" / ".cache" / "trio-tproxy"  # type: ignore[union-attr]

    def homeless() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", homeless)
    assert RouterCache.default() is None  # no place for a cache: no cache, no error


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(
    not (REPO / "geodata" / "country.mmdb").exists(), reason="scripts/setup builds geodata/"
)
def test_match_with_the_shipped_config_answers_the_same_from_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """conf/main.toml with the shipped lists (~35,000 entries): cold, warm, and uncached."""
    monkeypatch.chdir(REPO)
    targets = ["www.google.com", "www.baidu.com", "ads.example.doubleclick.net", "8.8.8.8"]

    def run(cache_dir: str) -> list[object]:
        monkeypatch.setenv(CACHE_ENV, cache_dir)
        out = []
        for target in targets:
            assert main(["match", target, "-c", "conf/main.toml", "--json"]) == 0
            out.append(json.loads(capsys.readouterr().out))
        return out

    cold = run(str(tmp_path))
    assert len(entries(tmp_path)) == 1
    assert run(str(tmp_path)) == cold == run("off")
    assert [r["outbound"] for r in cold] == ["proxy", "direct", "block", "proxy"]  # type: ignore[index]
