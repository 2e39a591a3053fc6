"""What the parts of a v2ray import share: the context (tags converted so far, marks)
and the exception that turns an outbound into a placeholder.
"""

from __future__ import annotations

from typing import Any

import attrs

from .draft import Draft
from .report import Node, Report, UnreadableInput

__all__ = ["Unsupported", "V2rayContext", "networks", "objects"]


class Unsupported(Exception):
    """This outbound cannot be expressed; the message says why."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(why)
        self.path = path
        self.why = why


@attrs.define
class V2rayContext:
    """What the routing and DNS parts need to know about the converted objects."""

    report: Report
    draft: Draft
    inbound_tags: set[str] = attrs.field(factory=set)  # converted
    source_inbound_tags: set[str] = attrs.field(factory=set)  # every tag in the source
    outbound_tags: dict[str, str] = attrs.field(factory=dict)  # source tag -> ours
    taken_tags: set[str] = attrs.field(factory=set)
    direct_tag: str | None = None  # the first freedom outbound (for "+local" DNS servers)
    marks: set[int] = attrs.field(factory=set)
    dns_outbounds: set[str] = attrs.field(factory=set)  # our tags of `dns` outbounds
    # dokodemo-door inbounds forwarding to a fixed address, by tag: (path, listen, port).
    # Routed to a dns outbound they are a DNS listener (dns.listen); else not converted.
    forwarders: dict[str, tuple[str, str, int]] = attrs.field(factory=dict)
    dns_listeners: set[str] = attrs.field(factory=set)

    @property
    def default_outbound(self) -> str:
        return self.draft.outbound_tags()[0]


def networks(item: Any) -> list[str]:
    if isinstance(item, str):
        item = item.split(",")
    if not isinstance(item, list):
        return []
    wanted = {str(x).strip().lower() for x in item}
    return [n for n in ("tcp", "udp") if n in wanted]


def objects(root: Node, key: str) -> list[Node]:
    items = root.take(key)
    if items is None:
        return []
    if not isinstance(items, list):
        raise UnreadableInput(f"{root.at(key)}: expected a list")
    nodes = []
    for i, item in enumerate(items):
        found = Node.of(item, f"{root.at(key)}[{i}]", root.report)
        if found is not None:
            nodes.append(found)
    return nodes
