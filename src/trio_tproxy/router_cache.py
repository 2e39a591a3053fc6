"""A disk cache of compiled domain indexes: `match` and restarts skip the list parsing.

Compiling a real configuration's domain rules (~35,000 geosite entries from ~1,400 list
files) costs ~0.35 s here, nearly all of it reading, parsing and indexing the lists, and
several seconds on a router's CPU; loading the compiled index back costs ~30 ms. v2ray
gets the same effect by shipping lists precompiled (geosite.dat); we keep the plain
domain-list-community files and compile them once per change instead.

An entry's name is a hash of everything its compilation read (see
:func:`~trio_tproxy.route.compile_router` and :meth:`~trio_tproxy.geo.GeoData.stamp`):
the rules' domain entries and which rules are domain-only, the rules directory as spelled
and resolved with the size, mtime, ctime, inode and mode of every file in it, the same of
the GeoIP database and .dat files, the Python and trio-tproxy versions and the modules
that build it. So an edited list, a rebuilt database, a changed rule or an upgrade
compiles afresh, and old entries age out (the newest :attr:`RouterCache.keep` stay). A
rules directory that cannot be listed is never cached, and neither is a compile whose
inputs changed in the last 2 s (a second edit within a coarse timestamp's tick would
leave the stamps as they were).

The cache is an optimisation, never a source of errors: an unusable directory, a corrupt
or foreign entry, a failed write all fall back to compiling. Entries are pickles, so
they are loaded only from a directory and files owned by this user and writable by no
one else, reached without following symlinks. The directory is
``$TRIO_TPROXY_CACHE_DIR`` (empty or ``off`` disables the cache), else
``$XDG_CACHE_HOME/trio-tproxy``, else ``~/.cache/trio-tproxy`` (none without a home).
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import logging
import os
import pickle
import secrets
import stat
import sys
import time
from pathlib import Path

from . import __version__
from .geo.stamps import file_stamp

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


# An input changed this recently may change again within its file system's timestamp
# granularity without its stamp changing (git's "racily clean" files): such a compile
# is used but not kept.
RACY_NS = 2_000_000_000


class RouterCache:
    def __init__(self, directory: Path, keep: int = 4, *, write_only: bool = False) -> None:
        self.directory = directory
        self.keep = keep
        self.write_only = write_only  # `check`: compile everything afresh, keep the result

    @classmethod
    def default(cls, *, write_only: bool = False) -> RouterCache | None:
        """The cache at the usual place (see the module docstring), None if disabled or
        if there is no such place (no $HOME and no passwd entry)."""
        configured = os.environ.get(CACHE_ENV)
        if configured is not None:
            if configured.strip() in ("", "off"):
                return None
            return cls(Path(configured), write_only=write_only)
        base = os.environ.get("XDG_CACHE_HOME")
        if not base:
            try:
                base = str(Path.home() / ".cache")
            except (RuntimeError, KeyError):
                return None
        return cls(Path(base) / "trio-tproxy", write_only=write_only)

    def key(self, material: object) -> str:
        """A name for the entry compiled from ``material`` (a repr-able description of
        every input); the package version and the building code are added here."""
        described = repr((__version__, sys.version, _code_stamp(), material))
        return hashlib.sha256(described.encode()).hexdigest()[:40]

    def _open_directory(self) -> int | None:
        """The directory, opened without following a symlink, if it is ours alone:
        every later access is relative to this descriptor, so nothing can be swapped in."""
        try:
            fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return None
        if _private(os.fstat(fd)):
            return fd
        log.debug("compile cache %s: not private to this user, unused", self.directory)
        os.close(fd)
        return None

    def load(self, key: str) -> object | None:
        """The stored value, or None (absent, unusable: the caller compiles)."""
        if self.write_only or (dir_fd := self._open_directory()) is None:
            return None
        try:
            return self._load(f"{_PREFIX}{key}{_SUFFIX}", dir_fd)
        finally:
            os.close(dir_fd)

    def _load(self, name: str, dir_fd: int) -> object | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=dir_fd)
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
            log.debug(
                "compile cache %s/%s: unreadable (%s), recompiling", self.directory, name, exc
            )
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            return None
        finally:
            if enabled:
                gc.enable()
        with contextlib.suppress(OSError):
            os.utime(name, dir_fd=dir_fd, follow_symlinks=False)  # recently used: kept
        log.debug("compiled rules loaded from %s/%s", self.directory, name)
        return value

    def store(self, key: str, value: object, newest_input_ns: int = 0) -> None:
        """Write atomically (readers never see half an entry); failures are logged only.

        ``newest_input_ns``: the latest mtime/ctime among the inputs (see RACY_NS)."""
        if newest_input_ns > time.time_ns() - RACY_NS:
            log.debug("compile cache: inputs changed just now, not kept")
            return
        try:
            with contextlib.suppress(FileExistsError):
                self.directory.mkdir(mode=0o700, parents=True)
            if (dir_fd := self._open_directory()) is None:
                return
            try:
                data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
                self._store(f"{_PREFIX}{key}{_SUFFIX}", data, dir_fd)
                self._prune(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:  # read-only home, full disk: compile next time too
            log.debug("compile cache %s: not written (%s)", self.directory, exc)
        except Exception as exc:  # something unpicklable: a bug, but not a reason to stop
            log.warning("compile cache: cannot store the compiled rules: %r", exc)

    @staticmethod
    def _store(name: str, data: bytes, dir_fd: int) -> None:
        tmp = f".tmp-{secrets.token_hex(8)}{_SUFFIX}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        fd = os.open(tmp, flags, 0o600, dir_fd=dir_fd)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise

    def _prune(self, dir_fd: int) -> None:
        entries = []
        for name in os.listdir(dir_fd):
            if name.startswith(_PREFIX) and name.endswith(_SUFFIX):
                with contextlib.suppress(OSError):
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    entries.append((st.st_mtime_ns, name))
        entries.sort(reverse=True)
        for _, name in entries[self.keep :]:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
