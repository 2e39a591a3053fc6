"""Client TLS sessions handed to connections as OpenSSL's own clients do it, through
ctypes on the ``ssl`` module's objects: the session kept is read once
(``SSL_get1_session``) and each connection is offered a duplicate of it
(``SSL_SESSION_dup``, ``SSL_set_session``), at ~1 us instead of a DER round trip.

Why: CPython before 3.12.7 and 3.13.1 copies a session through DER every time one is
given to a connection (Modules/_ssl.c, ``PySSL_set_session`` -> ``_ssl_session_dup``:
i2d, then d2i with the server's certificate decoded again) and every time one is read.
Under OpenSSL 3.0 that copy costs ~120 us, a third of a resumed handshake's client CPU
(bench/bench_tls_resume.py: full handshake 769, resumed through ``session=`` 650, from a
duplicate 410 us of client CPU per connection). Later versions (gh-116810) hand the one
session object to every connection instead; OpenSSL then spoils it for all of them when
any one of them sends or gets a fatal alert or meets an unexpected EOF
(``SSL_CTX_remove_session`` marks it not resumable while that connection is open). A
duplicate per connection is cheap on every version and keeps such a spoil to that
connection; the session kept is never attached to a connection at all.

Reaching the ``SSL *`` inside an ``ssl.SSLSocket`` needs CPython's object layout
(``PySSLSocket``: the object header, the socket's weakref, then ``SSL *ssl``, unchanged
from 3.6 to 3.14) and the very libssl the ``_ssl`` module uses. :func:`native_sessions`
gives None - ``session=``, as before - unless all of this holds: CPython 3.9 to 3.14,
exactly one libssl mapped into the process and already loaded, its version ``ssl``'s,
and a probe connection whose ``SSL *`` points at its context's ``SSL_CTX``, carries its
server name, and whose context has this libssl's ``TLS_client_method`` (an OpenSSL
linked into ``_ssl`` statically would not). ``TRIO_TPROXY_NATIVE_SESSIONS=off`` turns it
off.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import platform
import ssl
import sys
from typing import Any, Final

log = logging.getLogger("trio_tproxy.outbound.tls")

ENABLED: Final = os.environ.get("TRIO_TPROXY_NATIVE_SESSIONS", "on") != "off"
PTR: Final = ctypes.sizeof(ctypes.c_void_p)
HEAD: Final = object.__basicsize__  # PyObject_HEAD
SSL_AT: Final = HEAD + PTR  # PySSLSocket: header, Socket (weakref), SSL *ssl
CTX_AT: Final = HEAD  # PySSLContext: header, SSL_CTX *ctx
KNOWN_LAYOUT: Final = ((3, 9), (3, 14))  # the CPython versions whose layout this reads


def _pointer_at(obj: object, offset: int) -> int:
    return ctypes.c_void_p.from_address(id(obj) + offset).value or 0


def _libssl_path() -> str | None:
    """The one libssl mapped into this process (the ``_ssl`` module's), if one."""
    try:
        with open("/proc/self/maps", encoding="ascii", errors="replace") as maps:
            paths = {line.split(None, 5)[-1].strip() for line in maps if "/libssl.so" in line}
    except OSError:
        return None
    paths = {path for path in paths if os.path.basename(path).startswith("libssl.so")}
    return paths.pop() if len(paths) == 1 else None


class NativeSession:
    """A client session of our own (one reference, freed with this object), never
    attached to a connection: each is offered a duplicate. Carries the attributes
    SessionCache reads of an ``ssl.SSLSession``, and the context and server name it
    belongs to."""

    __slots__ = ("_free", "context", "has_ticket", "id", "pointer", "server_hostname",
                 "ticket_lifetime_hint", "time", "timeout")  # fmt: skip

    def __init__(self, lib: Any, pointer: int, sock: ssl.SSLSocket) -> None:
        self._free, self.pointer = lib.SSL_SESSION_free, pointer  # first: __del__ frees it
        self.context = sock.context  # held: a context at the same address is another one
        self.server_hostname = sock.server_hostname
        self.time = int(lib.SSL_SESSION_get_time(pointer))
        self.timeout = int(lib.SSL_SESSION_get_timeout(pointer))
        self.ticket_lifetime_hint = int(lib.SSL_SESSION_get_ticket_lifetime_hint(pointer))
        self.has_ticket = bool(lib.SSL_SESSION_has_ticket(pointer))
        length = ctypes.c_uint(0)
        id_pointer = lib.SSL_SESSION_get_id(pointer, ctypes.byref(length))
        self.id = ctypes.string_at(id_pointer, length.value) if id_pointer else b""

    def __del__(self) -> None:
        with contextlib.suppress(AttributeError):  # an __init__ that failed early
            self._free(self.pointer)


class NativeSessions:
    """libssl's session calls on ``ssl.SSLSocket`` objects (see the module's doc)."""

    def __init__(self, lib: Any) -> None:
        self._lib = lib

    @staticmethod
    def _ssl(sock: ssl.SSLSocket) -> int:
        sslobj = sock._sslobj  # type: ignore[attr-defined]  # the _ssl._SSLSocket
        if sslobj is None:  # closed, or never connected
            return 0
        return _pointer_at(sslobj, SSL_AT)

    def offer(self, sock: ssl.SSLSocket, session: NativeSession) -> bool:
        """Before the handshake: resume a duplicate of ``session``, if it belongs to
        the connection's context and server name (OpenSSL checks neither). Whether it
        was offered."""
        pointer = self._ssl(sock)
        if (not pointer or sock.context is not session.context
                or sock.server_hostname != session.server_hostname):  # fmt: skip
            return False
        duplicate = self._lib.SSL_SESSION_dup(session.pointer)
        if not duplicate:
            return False
        try:  # SSL_set_session takes a reference of its own
            return bool(self._lib.SSL_set_session(pointer, duplicate) == 1)
        finally:
            self._lib.SSL_SESSION_free(duplicate)

    def session_of(self, sock: ssl.SSLSocket) -> NativeSession | None:
        """A duplicate of the connection's session, if it has one (not the session
        itself: what happens to the connection later must not touch ours)."""
        pointer = self._ssl(sock)
        live = self._lib.SSL_get1_session(pointer) if pointer else None
        if not live:
            return None
        try:
            duplicate = self._lib.SSL_SESSION_dup(live)
        finally:
            self._lib.SSL_SESSION_free(live)
        return NativeSession(self._lib, duplicate, sock) if duplicate else None


def _bind(path: str) -> Any:
    lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)  # OSError unless it is loaded already
    void_p, c_int, c_long = ctypes.c_void_p, ctypes.c_int, ctypes.c_long
    signatures: dict[str, tuple[list[Any], Any]] = {
        "OpenSSL_version_num": ([], ctypes.c_ulong),
        "SSL_get_SSL_CTX": ([void_p], void_p),
        "SSL_get_servername": ([void_p, c_int], ctypes.c_char_p),
        "SSL_CTX_get_ssl_method": ([void_p], void_p),
        "TLS_client_method": ([], void_p),
        "SSL_set_session": ([void_p, void_p], c_int),
        "SSL_get1_session": ([void_p], void_p),
        "SSL_SESSION_dup": ([void_p], void_p),
        "SSL_SESSION_free": ([void_p], None),
        "SSL_SESSION_get_time": ([void_p], c_long),
        "SSL_SESSION_get_timeout": ([void_p], c_long),
        "SSL_SESSION_get_ticket_lifetime_hint": ([void_p], ctypes.c_ulong),
        "SSL_SESSION_has_ticket": ([void_p], c_int),
        "SSL_SESSION_get_id": ([void_p, ctypes.POINTER(ctypes.c_uint)], void_p),
    }
    for name, (args, result) in signatures.items():
        function = getattr(lib, name)  # AttributeError if this libssl lacks one
        function.argtypes, function.restype = args, result
    return lib


def _probe(lib: Any) -> bool:
    """A connection object of a fresh context: its ``SSL *`` as read must be one of
    that context, with the server name it was given, and the context one of this
    libssl (its TLS_client_method)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    name = "probe.trio-tproxy.invalid"
    bio = context.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname=name)
    sslobj = bio._sslobj  # type: ignore[attr-defined]  # the _ssl._SSLSocket
    if type(sslobj).__basicsize__ < SSL_AT + PTR or type(context).__basicsize__ < CTX_AT + PTR:
        return False
    pointer, ctx = _pointer_at(sslobj, SSL_AT), _pointer_at(context, CTX_AT)
    if not pointer or not ctx or lib.SSL_get_SSL_CTX(pointer) != ctx:
        return False
    return bool(lib.SSL_get_servername(pointer, 0) == name.encode()
                and lib.SSL_CTX_get_ssl_method(ctx) == lib.TLS_client_method())  # fmt: skip


@functools.cache
def native_sessions() -> NativeSessions | None:
    """The process's NativeSessions, or None where they cannot be used safely (then
    ``session=``); found once."""
    return _load()


def _load() -> NativeSessions | None:
    if not ENABLED:
        return None
    low, high = KNOWN_LAYOUT
    if platform.python_implementation() != "CPython" or not low <= sys.version_info[:2] <= high:
        return None
    path = _libssl_path()
    if path is None:
        return None
    try:
        lib = _bind(path)
        if lib.OpenSSL_version_num() != ssl.OPENSSL_VERSION_NUMBER or not _probe(lib):
            return None
    except (OSError, AttributeError, ValueError, ssl.SSLError) as exc:
        log.debug("TLS sessions through session=: %s", exc)
        return None
    return NativeSessions(lib)


__all__ = ["NativeSession", "NativeSessions", "native_sessions"]
