"""A disk cache of compiled domain indexes: `match` and restarts skip the list parsing.

Compiling a real configuration's domain rules (~35,000 geosite entries from ~1,400 list
files) costs ~0.35 s here, nearly all of it reading, parsing and indexing the lists, and
several seconds on a router's CPU; loading the compiled index back costs ~30 ms. v2ray
gets the same effect by shipping lists precompiled (geosite.dat); we keep the plain
domain-list-community files and compile them once per change instead.

An entry's name is a hash of everything its compilation read (see
:func:`~trio_tproxy.route.compile_router` and :meth:`~trio_tproxy.geo.GeoData.stamp`):
the rules' domain entries, every file of the rules directory (name, size, mtime, inode),
the GeoIP database's, the Python and trio-tproxy versions and the sources of the
modules that build it. So an edited list,
a rebuilt database, a changed rule or an upgrade compiles afresh, and old entries age
out (the newest :attr:`RouterCache.keep` stay).

The cache is an optimisation, never a source of errors: an unusable directory, a corrupt
or foreign entry, a failed write all fall back to compiling. Entries are pickles, so
they are loaded only from a directory and files owned by this user and writable by no
one else. The directory is ``$TRIO_TPROXY_CACHE_DIR`` (empty or ``off`` disables the
cache), else ``$XDG_CACHE_HOME/trio-tproxy``, else ``~/.cache/trio-tproxy``.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import pickle
import stat
import sys
import tempfile
from pathlib import Path

from . import __version__
from .geo import file_stamp

__all__ = ["CACHE_ENV", "RouterCache"]

log = logging.getLogger(__name__)

CACHE_ENV = "TRIO_TPROXY_CACHE_DIR"
_PREFIX = "router-"
_SUFFIX = ".pickle"


def _code_stamp() -> tuple[object, ...]:
    """The sources that build and define what is cached (an edited checkout, an upgrade)."""
    here = Path(__file__).parent
    return tuple(
        file_stamp(p) for d in (here / "route", here / "geo") for p in sorted(d.glob("*.py"))
    )


def _private(st: os.stat_result) -> bool:
    return st.st_uid == os.geteuid() and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


class RouterCache:
    def __init__(self, directory: Path, keep: int = 4, *, write_only: bool = False) -> None:
        self.directory = directory
        self.keep = keep
        self.write_only = write_only  # `check`: compile everything afresh, keep the result

    @classmethod
    def default(cls, *, write_only: bool = False) -> RouterCache | None:
        """The cache at the usual place (see the module docstring), None if disabled."""
        configured = os.environ.get(CACHE_ENV)
        if configured is not None:
            if configured.strip() in ("", "off"):
                return None
            return cls(Path(configured), write_only=write_only)
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return cls(Path(base) / "trio-tproxy", write_only=write_only)

    def key(self, material: object) -> str:
        """A name for the entry compiled from ``material`` (a repr-able description of
        every input); the package version and the building code are added here."""
        described = repr((__version__, sys.version, _code_stamp(), material))
        return hashlib.sha256(described.encode()).hexdigest()[:40]

    def _path(self, key: str) -> Path:
        return self.directory / f"{_PREFIX}{key}{_SUFFIX}"

    def load(self, key: str) -> object | None:
        """The stored value, or None (absent, unusable: the caller compiles)."""
        if self.write_only:
            return None
        path = self._path(key)
        try:
            if not _private(self.directory.stat()):
                log.debug("compile cache %s: not private to this user, unused", self.directory)
                return None
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            try:
                if not _private(os.fstat(fd)):
                    return None
                data = f.read()
            except OSError:
                return None
        enabled = gc.isenabled()
        gc.disable()  # ~100k objects at once: collections would triple the load time
        try:
            value: object = pickle.loads(data)  # noqa: S301 - our own file (_private)
        except Exception as exc:  # a corrupt or stale entry: any error at all
            log.debug("compile cache %s: unreadable (%s), recompiling", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        finally:
            if enabled:
                gc.enable()
        with contextlib.suppress(OSError):
            os.utime(path)  # recently used: pruned last
        log.debug("compiled rules loaded from %s", path)
        return value

    def store(self, key: str, value: object) -> None:
        """Write atomically (readers never see half an entry); failures are logged only."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _private(self.directory.stat()):
                return
            data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=_SUFFIX)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(tmp, self._path(key))
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self._prune()
        except OSError as exc:  # read-only home, full disk: compile next time too
            log.debug("compile cache %s: not written (%s)", self.directory, exc)
        except Exception as exc:  # something unpicklable: a bug, but not a reason to stop
            log.warning("compile cache: cannot store the compiled rules: %r", exc)

    def _prune(self) -> None:
        entries = []
        for path in self.directory.glob(f"{_PREFIX}*{_SUFFIX}"):
            with contextlib.suppress(OSError):
                entries.append((path.stat().st_mtime_ns, path))
        entries.sort(reverse=True)
        for _, path in entries[self.keep :]:
            with contextlib.suppress(OSError):
                path.unlink()
