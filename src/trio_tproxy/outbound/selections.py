"""Selector choices kept on disk, so a member chosen by hand survives a restart.

The file is ``selections.json`` in the state directory: ``$STATE_DIRECTORY`` (systemd's
``StateDirectory=``; the first entry when it lists several), else
``/var/lib/trio-tproxy`` when it exists or we run as root, else
``~/.local/state/trio-tproxy``. It is rewritten whole through a temporary file and
``rename(2)``, so a crash mid-write leaves the previous choices, never half a file.
A file that cannot be read or parsed counts as empty (with one warning): a lost
choice falls back to the first member, it never stops the gateway. No trio here:
``match`` reads it offline.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("trio_tproxy.outbound.selections")

FILE_NAME = "selections.json"
SYSTEM_STATE_DIR = Path("/var/lib/trio-tproxy")


def state_dir() -> Path:
    env = os.environ.get("STATE_DIRECTORY", "")
    if env:
        return Path(env.split(":")[0])
    if SYSTEM_STATE_DIR.is_dir() or os.geteuid() == 0:
        return SYSTEM_STATE_DIR
    return Path.home() / ".local" / "state" / "trio-tproxy"


class SelectionStore:
    """group tag -> the member chosen by hand, kept in ``path`` (None: in memory only).

    The file is read when a choice is first needed, so building a runtime for
    ``check`` or a test costs nothing until a selector is used."""

    def __init__(self, path: Path | None, choices: dict[str, str] | None = None) -> None:
        self.path = path
        self._choices: dict[str, str] | None = None if choices is None else dict(choices)
        if path is None and choices is None:
            self._choices = {}
        # told of every choice made (the hub of worker processes passes them on)
        self.on_change: Callable[[], None] | None = None

    @classmethod
    def default(cls) -> SelectionStore:
        """The state directory's file (read on first use); in memory only when there
        is no state directory to be had (no $STATE_DIRECTORY, no root, no home)."""
        try:
            return cls(state_dir() / FILE_NAME)
        except RuntimeError as exc:  # Path.home() without $HOME or a passwd entry
            log.warning("selector choices are not kept across restarts: %s", exc)
            return cls(None)

    @classmethod
    def load(cls, path: Path) -> SelectionStore:
        store = cls(path)
        store._choices = _read(path)
        return store

    @property
    def choices(self) -> dict[str, str]:
        if self._choices is None:
            assert self.path is not None
            self._choices = _read(self.path)
        return self._choices

    def adopt(self, choices: dict[str, str]) -> None:
        """Take choices made elsewhere (the hub's) in memory only: the file is the hub's."""
        self._choices = dict(choices)

    def get(self, group: str) -> str | None:
        return self.choices.get(group)

    def set(self, group: str, member: str) -> None:
        """Remember and persist; a failed write is logged, the choice still holds."""
        self.choices[group] = member
        if self.on_change is not None:
            self.on_change()
        if self.path is None:
            return
        try:
            self._write(self.path)
        except OSError as exc:
            log.warning("selector choice %s=%s not saved to %s: %s (it holds until restart)",
                        group, member, self.path, exc.strerror or exc)  # fmt: skip

    def _write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with temp.open("w") as f:
                json.dump(self.choices, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise


def _read(path: Path) -> dict[str, str]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("selector choices in %s not read (%s): every selector starts on its "
                    "first member", path, exc)  # fmt: skip
        return {}
    if not isinstance(raw, dict):
        log.warning("selector choices in %s ignored: not a JSON object", path)
        return {}
    return {k: v for k, v in raw.items() if isinstance(k, str) and isinstance(v, str)}


def describe_group(group: Any, store: SelectionStore) -> dict[str, Any]:
    """What ``match`` says offline about the group a flow would go to (``group``: its
    config): a selector's member is known (its saved choice, else the first); urltest
    and fallback choose by probes, so only the running gateway knows theirs."""
    member = None
    if group.TYPE == "selector":
        chosen = store.get(group.tag)
        member = chosen if chosen in group.outbounds else group.outbounds[0]
    return {"group": {"tag": group.tag, "type": group.TYPE, "members": list(group.outbounds)},
            "member": member}  # fmt: skip
