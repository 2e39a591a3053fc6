"""GeoData: lazy loading, and what a missing or incomplete database produces."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from trio_tproxy.config.schema import GeodataConfig
from trio_tproxy.geo import GeoData, GeoipError, build_country_mmdb


def test_load_resolves_paths_against_base_dir(tmp_path: Path) -> None:
    geo = GeoData.load(GeodataConfig(geoip="g/c.mmdb", rules_dir="r"), tmp_path)
    assert (geo.rules_dir, geo.geoip_path) == (tmp_path / "r", tmp_path / "g/c.mmdb")
    geo = GeoData.load(GeodataConfig(geoip="/abs/c.mmdb", rules_dir="r"), tmp_path)
    assert geo.geoip_path == Path("/abs/c.mmdb")


def test_private_needs_no_database(tmp_path: Path) -> None:
    geo = GeoData(tmp_path / "rules", tmp_path / "missing.mmdb")
    v4, v6 = geo.country_ranges("PRIVATE")
    assert (0x0A000000, 0x0AFFFFFF) in v4
    assert (0xFC << 120, (0xFE << 120) - 1) in v6
    assert geo._db is None


def test_missing_database_says_how_to_build_one(tmp_path: Path) -> None:
    geo = GeoData(tmp_path / "rules", tmp_path / "geodata/country.mmdb")
    with pytest.raises(GeoipError) as info:
        geo.country_ranges("cn")
    message = str(info.value)
    assert "not found" in message
    assert (
        "trio-tproxy geodata build /usr/share/tor/geoip /usr/share/tor/geoip6 "
        f"-o {tmp_path}/geodata/country.mmdb" in message
    )


def test_countries_are_extracted_once_and_validated(tmp_path: Path) -> None:
    (tmp_path / "c.csv").write_text("1.0.1.0/24,CN\n8.8.8.0/24,US\n")
    build_country_mmdb([tmp_path / "c.csv"], tmp_path / "c.mmdb")
    geo = GeoData(tmp_path, tmp_path / "c.mmdb")
    geo.prefetch_countries({"cn", "us", "private", "xx"})
    assert set(geo._countries) == {"CN", "US"}
    assert geo.country_ranges("Cn") == ([(0x01000100, 0x010001FF)], [])
    with pytest.raises(GeoipError, match="country 'UK' is not in"):
        geo.country_ranges("uk")
    assert geo.lookup_country("8.8.8.8") == "US"


def test_geosite_lists_are_read_lazily(
    rules_dir: Callable[[dict[str, str]], Path], tmp_path: Path
) -> None:
    d = rules_dir({"a": "a.com", "b": "b_bad"})
    geo = GeoData(d, tmp_path / "none.mmdb")
    assert [r.value for r in geo.geosite("A")] == ["a.com"]
    assert set(geo._sites._files) == {"a"}
