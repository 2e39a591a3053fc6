"""Finding the data files an imported config uses (the one part here that looks at
the file system; the converters stay pure).

v2ray keeps ``geosite.dat`` / ``geoip.dat`` in its asset directory; mihomo keeps
``Country.mmdb`` (MaxMind format, readable as our ``geoip``), ``GeoSite.dat`` and
``GeoIP.dat`` in its home directory. Both default here to the directory of the
config file. Our own defaults (``geodata/country.mmdb``, ``rules``) are made absolute,
found from the working directory or else from this source checkout, so the converted
config passes ``check`` from any directory.
"""

from __future__ import annotations

from pathlib import Path

from ..config.schema import GeodataConfig
from .draft import GeodataPaths

__all__ = ["find_geodata"]

_CHECKOUT = Path(__file__).resolve().parents[3]  # src/trio_tproxy/importers -> the repo


def _find(directory: Path, name: str) -> str:
    """``directory/name``, the name matched case-insensitively; "" when absent."""
    try:
        for entry in directory.iterdir():
            if entry.name.lower() == name.lower() and entry.is_file():
                return str(entry.absolute())
    except OSError:
        pass
    return ""


def _ours(relative: str) -> str:
    for base in (Path.cwd(), _CHECKOUT):
        if (base / relative).exists():
            return str((base / relative).absolute())
    return str((Path.cwd() / relative).absolute())


def find_geodata(kind: str, source: Path, assets: Path | None) -> GeodataPaths:
    directory = assets if assets is not None else source.absolute().parent
    defaults = GeodataConfig()
    geoip = _ours(defaults.geoip)
    if kind == "clash":
        geoip = _find(directory, "Country.mmdb") or geoip
    return GeodataPaths(
        geoip=geoip,
        rules_dir=_ours(defaults.rules_dir),
        geosite_dat=_find(directory, "geosite.dat"),
        geoip_dat=_find(directory, "geoip.dat"),
    )
