"""``trio-tproxy import clash``: a Clash / mihomo YAML config -> our TOML.

Pure: the caller reads the file and finds the data files (:class:`GeodataPaths`).
See :mod:`.clash_inbounds`, :mod:`.clash_proxies`, :mod:`.clash_rules` and
:mod:`.clash_dns` for what maps to what.
"""

from __future__ import annotations

from .clash_context import ClashContext, load_yaml
from .clash_dns import convert_dns
from .clash_inbounds import convert_general
from .clash_proxies import assemble_outbounds, convert_proxies
from .clash_rules import convert_rules, match_target
from .draft import Draft, GeodataPaths
from .report import ImportResult, Node, Report

__all__ = ["convert_clash"]


def convert_clash(text: str, *, name: str, geodata: GeodataPaths) -> ImportResult:
    """Convert a Clash/mihomo YAML config; raises :class:`UnreadableInput`."""
    raw = load_yaml(text, name)
    report = Report()
    root = Node({str(k): v for k, v in raw.items()}, "$", report)
    ctx = ClashContext(report, Draft())
    ctx.draft.intro += [f"Converted by `trio-tproxy import clash` from {name}.",
                        "Review it before use; `trio-tproxy check` validates it."]  # fmt: skip
    ctx.draft.set_geodata(geodata)
    convert_general(ctx, root)
    convert_proxies(ctx, root)
    default = match_target(ctx, root)
    convert_rules(ctx, root)
    convert_dns(ctx, root)
    assemble_outbounds(ctx, default)
    root.leftovers()
    return ImportResult(ctx.draft.render(), tuple(report.omissions))
