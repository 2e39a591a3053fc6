"""Stamps of files: what a cache must see unchanged to reuse what was computed from them."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import cast

__all__ = ["Stamp", "file_stamp", "newest", "tree_stamp"]

Stamp = tuple[object, ...]


def _stat_stamp(st: os.stat_result) -> tuple[int, int, int, int, int]:
    # ctime too: a chmod changes it, and no tool can set it back as `touch -r` does mtime
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_mode


def file_stamp(path: Path) -> Stamp | None:
    """What a cache must see unchanged of one file: its path (as given and resolved) and
    its size, times, inode and mode; None if it does not exist."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (str(path), str(path.resolve()), *_stat_stamp(st))


def tree_stamp(directory: Path) -> tuple[Stamp | None, tuple[Stamp, ...]] | None:
    """The directory's stamp and each entry's (name, size, times, inode, mode), symlinks
    followed; None if it cannot be listed (then nothing read from it may be cached)."""
    entries = []
    try:
        with os.scandir(directory) as it:
            for entry in it:
                with contextlib.suppress(OSError):  # vanished meanwhile: not part of it
                    entries.append((entry.name, *_stat_stamp(entry.stat())))
    except OSError:
        return None
    return file_stamp(directory), tuple(sorted(entries))


def newest(stamps: list[Stamp | None]) -> int:
    """The latest mtime or ctime in stamps (both end in mtime, ctime, inode, mode)."""
    times = [cast(int, t) for s in stamps if s is not None for t in s[-4:-2]]
    return max(times, default=0)
