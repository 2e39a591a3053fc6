"""Zero-copy TCP forwarding with splice(2): socket -> pipe -> socket, in the kernel.

The recipe (peers.md §3, after Go's internal/poll and sing's bufio/splice_linux.go):
splice from the source socket into a pipe, then drain the pipe completely into the
destination before reading again. Draining to empty keeps EAGAIN unambiguous: on the
read side it means "no data yet", never "pipe full". SPLICE_F_NONBLOCK only concerns
the pipe; the sockets are O_NONBLOCK already (trio-style), so neither call ever blocks.

Pipes cost two descriptors each and a flow needs one per direction, so they come from
a bounded pool: a flow that finds none keeps copying through userspace buffers.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Callable

import trio

log = logging.getLogger("trio_tproxy.splice")

PIPE_SIZE = 1 << 20  # F_SETPIPE_SZ: fewer syscalls per MiB; capped by fs/pipe-max-size
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP}


class PipePool:
    """Pipes for splice, at most ``limit`` in use; empty idle ones are kept for reuse."""

    def __init__(self, limit: int, keep: int = 32) -> None:
        self.limit = limit
        self.keep = keep
        self.in_use = 0
        self.supported = hasattr(os, "splice") and limit > 0
        self._idle: list[tuple[int, int]] = []
        self._size = PIPE_SIZE

    def acquire(self) -> tuple[int, int] | None:
        if not self.supported or self.in_use >= self.limit:
            return None
        if self._idle:
            pipe = self._idle.pop()
        else:
            try:
                pipe = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:  # out of descriptors: userspace copying still works
                return None
            # EPERM above pipe-max-size or past the user's pipe quota: keep 64 KiB
            with contextlib.suppress(OSError):
                self._size = fcntl.fcntl(pipe[1], fcntl.F_SETPIPE_SZ, self._size)
        self.in_use += 1
        return pipe

    def release(self, pipe: tuple[int, int], *, empty: bool) -> None:
        self.in_use -= 1
        if empty and len(self._idle) < self.keep:
            self._idle.append(pipe)
        else:
            os.close(pipe[0])
            os.close(pipe[1])

    def close(self) -> None:
        while self._idle:
            r, w = self._idle.pop()
            os.close(r)
            os.close(w)


class SpliceUnsupported(Exception):
    """The kernel refused splice for these descriptors; copy in userspace instead."""


async def splice_until_eof(
    src: socket.socket,
    dst: socket.socket,
    pipes: PipePool,
    pipe: tuple[int, int],
    on_chunk: Callable[[int], None],
) -> None:
    """Move ``src`` to ``dst`` through ``pipe`` until EOF; releases the pipe."""
    r, w = pipe
    src_fd, dst_fd = src.fileno(), dst.fileno()
    in_pipe = 0
    first = True
    try:
        while True:
            try:
                n = os.splice(src_fd, w, pipes._size, flags=_FLAGS)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(src)
                continue
            except OSError as exc:
                if first and exc.errno in _UNSUPPORTED:
                    pipes.supported = False
                    log.info("splice unsupported here (%s): copying in userspace", exc.strerror)
                    raise SpliceUnsupported from exc
                raise
            first = False
            if n == 0:
                return
            in_pipe = n
            while in_pipe:
                try:
                    in_pipe -= os.splice(r, dst_fd, in_pipe, flags=_FLAGS)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(dst)
            on_chunk(n)
            await trio.lowlevel.checkpoint()
    finally:
        pipes.release(pipe, empty=in_pipe == 0)
