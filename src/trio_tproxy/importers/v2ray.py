"""``trio-tproxy import v2ray``: a v2ray v4 / Xray JSON config -> our TOML.

Pure: the caller reads the file and finds the data files (:class:`GeodataPaths`).
Inbounds and outbounds come first, DNS next (rules may name its tag), then routing.
"""

from __future__ import annotations

from .draft import Draft, GeodataPaths
from .jsonc import load_jsonc
from .report import ImportResult, Node, Report
from .v2ray_context import V2rayContext
from .v2ray_dns import convert_dns
from .v2ray_inbounds import convert_inbounds, convert_log, convert_policy
from .v2ray_outbounds import convert_outbounds
from .v2ray_routing import convert_routing

__all__ = ["convert_v2ray"]


def convert_v2ray(text: str, *, name: str, geodata: GeodataPaths) -> ImportResult:
    """Convert a v2ray/Xray JSON config; raises :class:`UnreadableInput`."""
    raw = load_jsonc(text, name)
    report = Report()
    root = Node(raw, "$", report)
    ctx = V2rayContext(report, Draft())
    ctx.draft.intro += [f"Converted by `trio-tproxy import v2ray` from {name}.",
                        "Review it before use; `trio-tproxy check` validates it."]  # fmt: skip
    ctx.draft.set_geodata(geodata)
    convert_log(ctx, root)
    convert_inbounds(ctx, root)
    convert_outbounds(ctx, root)
    convert_dns(ctx, root.node("dns"))
    convert_routing(ctx, root.node("routing"))
    convert_policy(ctx, root)
    root.leftovers()
    return ImportResult(ctx.draft.render(), tuple(report.omissions))
