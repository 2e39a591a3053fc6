"""A dashboard's static files at /ui/ (yacd, metacubexd, zashboard builds), from ui_dir.

Only regular files under ``ui_dir`` are served: the request path is decoded once,
split into segments, and any empty, ``.``/``..`` or NUL-bearing segment is refused
before the file system is asked; the resolved path (symlinks followed) must still lie
under the resolved root. No credentials are needed: the dashboard asks for the secret
itself, and the files hold none.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path, PurePosixPath

import trio

from .http import Reply

# Dashboards ship a few large chunks (yacd's biggest is ~400 KiB); anything past this
# is not a dashboard file and is not read into memory.
MAX_FILE_BYTES = 16 * 1024 * 1024

# Types mimetypes may not know (or know differently on some systems).
_TYPES = {
    ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8", ".html": "text/html; charset=utf-8",
    ".json": "application/json", ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
    ".woff": "font/woff", ".woff2": "font/woff2", ".ttf": "font/ttf", ".txt": "text/plain",
    ".wasm": "application/wasm", ".map": "application/json",
}  # fmt: skip

NOT_FOUND = Reply(404, b'{"message": "Resource not found"}')


def content_type(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in _TYPES:
        return _TYPES[suffix]
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


def resolve(root: Path, relative: str) -> Path | None:
    """The file ``relative`` (below /ui/) names inside ``root``, or None."""
    segments = relative.split("/")
    if any(s in (".", "..") or "\0" in s or "\\" in s for s in segments):
        return None
    segments = [s for s in segments if s]
    base = root.resolve()
    target = base.joinpath(*segments).resolve()
    if target != base and base not in target.parents:
        return None  # a symlink out of the dashboard
    if target.is_dir():
        target = target / "index.html"
    return target if target.is_file() else None


async def serve_file(root: Path, relative: str) -> Reply:
    target = await trio.to_thread.run_sync(resolve, root, relative)
    if target is None:
        return NOT_FOUND
    try:
        size = target.stat().st_size
        if size > MAX_FILE_BYTES:
            return NOT_FOUND
        body = await trio.Path(target).read_bytes()
    except OSError:
        return NOT_FOUND
    # index.html must be re-fetched after a dashboard update; the hashed assets need not.
    cache = "no-cache" if target.suffix == ".html" else "public, max-age=3600"
    return Reply(200, body, content_type(target.name), (("cache-control", cache),))
