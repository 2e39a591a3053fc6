"""Which member a group sends new flows to: pure, no trio, no I/O.

The inputs are what the probes saw (each member's last delay: None = never probed,
0 = its last probe failed, mihomo's convention), the configured order, and what the
group chose before; the output is a member tag or None when every member is down.

- **selector**: the member chosen by hand (default: the first). A chosen member whose
  probe failed is still used (the user chose it, as mihomo does), unless every member
  is down: then flows fail at once instead of each waiting out a dead proxy.
- **fallback**: the first member in configured order whose last probe succeeded; when
  a better-ordered member recovers, new flows return to it.
- **urltest**: the live member with the lowest delay, but the previous choice is kept
  while it is alive and no more than ``tolerance`` slower than the best, so flows do not
  flap between two members of nearly the same speed. Before any probe finished, the
  first member (sing-box and mihomo do the same).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import attrs

KINDS = ("selector", "urltest", "fallback")


def alive(delay: int | None) -> bool:
    """A member is usable unless its last probe failed (never probed counts as alive)."""
    return delay is None or delay > 0


@attrs.frozen
class GroupView:
    """What one group's choice depends on, frozen at one moment."""

    kind: str
    members: tuple[str, ...]
    delays: Mapping[str, int | None]  # member -> last delay (None never probed, 0 failed)
    previous: str | None = None  # the group's choice so far (urltest keeps it)
    selected: str | None = None  # selector: the member chosen by hand
    tolerance_ms: int = 0

    def delay(self, member: str) -> int | None:
        return self.delays.get(member)


def choose(view: GroupView) -> str | None:
    """The member new flows go to, or None when every member is down."""
    live = [m for m in view.members if alive(view.delay(m))]
    if not live:
        return None
    if view.kind == "selector":
        selected = view.selected
        return selected if selected is not None and selected in view.members else view.members[0]
    if view.kind == "fallback":
        return live[0]
    if view.kind == "urltest":
        return _fastest(view, live)
    raise ValueError(f"unknown group kind {view.kind!r}")


def _fastest(view: GroupView, live: Sequence[str]) -> str:
    measured = [m for m in live if view.delay(m) is not None]
    if not measured:  # nothing measured yet: keep what we had, else the first
        previous = view.previous
        return previous if previous is not None and previous in live else live[0]
    # min() keeps the first of equal delays: configured order breaks ties.
    best = min(measured, key=lambda m: view.delays[m] or 0)
    previous = view.previous
    if previous in measured and previous is not None:
        slower_by = (view.delays[previous] or 0) - (view.delays[best] or 0)
        if slower_by <= view.tolerance_ms:
            return previous
    return best


def show_delays(members: Sequence[str], delays: Mapping[str, int | None]) -> str:
    """``ss-hk 120ms, ss-us failed, home untested``: the figures a choice was made on."""
    parts = []
    for member in members:
        delay = delays.get(member)
        text = "untested" if delay is None else "failed" if delay == 0 else f"{delay}ms"
        parts.append(f"{member} {text}")
    return ", ".join(parts)
