"""Bring your config: v2ray/Xray JSON and Clash/mihomo YAML converted to our TOML.

Pure (no trio, no sockets, no file access): ``convert_*`` take the text of the source
and the absolute paths of the data files, and return the TOML and every construct
that was left out (path and why). ``trio-tproxy import`` (cli.py) does the reading,
writing and finding of data files around them.
"""

from __future__ import annotations

from .clash import convert_clash
from .draft import GeodataPaths
from .report import ImportResult, Omission, UnreadableInput
from .v2ray import convert_v2ray

__all__ = [
    "GeodataPaths", "ImportResult", "Omission", "UnreadableInput", "convert_clash", "convert_v2ray",
]  # fmt: skip
