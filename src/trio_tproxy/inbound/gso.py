"""Sending a burst of datagrams as one: UDP generic segmentation offload (UDP_SEGMENT).

Per datagram, ``sendto`` walks the whole IP stack and wakes the receiver; measured in
the lab, that is ~9.5 us of CPU for a 1400-byte datagram, against ~1.6 us each when 16
go down in one ``sendmsg`` with a UDP_SEGMENT control message (Linux >= 4.18 splits
them late, in the driver or in software just before it). Bulk UDP (QUIC downloads,
iperf3, video calls) arrives in bursts that the receive loops read in batches, so the
datagrams of one batch that go from one socket to one destination with one size are
coalesced and sent together when the batch ends -- no timer, no added latency: what
arrived together leaves together.

The rules: deferral only happens inside a batch (:func:`open_batch` ..
:func:`close_batch`, around synchronous code only, so no other task can see a half-done
batch); the first datagram of a run is sent at once, so an error (no route, EPERM) is
still reported to its flow; followers must have the first one's size (the last may be
shorter: the kernel's rule); at most 64 segments and 64 KiB. A failed GSO send is
retried datagram by datagram; EIO (no checksum offload on that route) turns GSO off
for the socket. Followers lost in a failed flush are counted in :data:`stats`.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Final

import attrs

from ..addr import Endpoint

SOL_UDP: Final = 17
UDP_SEGMENT: Final = 103
MAX_SEGMENTS: Final = 64  # UDP_MAX_SEGMENTS in older kernels (newer allow 128)
MAX_BYTES: Final = 65000  # the UDP length field bounds the whole super-datagram


@attrs.define
class GsoStats:
    coalesced: int = 0  # datagrams that left as part of a GSO send
    dropped: int = 0  # followers lost when a deferred send failed


@attrs.define
class _Batch:
    depth: int = 0  # open_batch() calls not yet closed
    pending: list[Coalescer] = attrs.field(factory=list)  # runs to flush at the close


stats = GsoStats()
_batch = _Batch()


def open_batch() -> None:
    _batch.depth += 1


def close_batch() -> None:
    """End a batch: every run coalesced since the outermost open_batch() is sent."""
    _batch.depth -= 1
    if _batch.depth == 0 and _batch.pending:
        runs = _batch.pending[:]
        _batch.pending.clear()
        for run in runs:
            run.flush()


class Coalescer:
    """The send side of one UDP socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.enabled = True
        self._buf = bytearray()
        self._dst: Endpoint | None = None
        self._size = 0
        self._count = 0
        self._closed = False  # a shorter last segment ended the run
        self._registered = False  # in _pending, flushed when the batch closes

    def send(self, payload: memoryview, dst: Endpoint) -> str | None:
        """Send now or with the batch; None, or why it was dropped."""
        size = len(payload)
        if self._dst is not None:
            if (dst == self._dst and not self._closed and self._count < MAX_SEGMENTS
                    and 0 < size <= self._size and len(self._buf) + size <= MAX_BYTES):  # fmt: skip
                self._buf += payload
                self._count += 1
                self._closed = size < self._size
                return None
            self.flush()
        reason = self._send_one(payload, dst)
        if reason is None and _batch.depth and self.enabled and size:
            # Sent; later datagrams of this batch like it may follow in one GSO send.
            self._dst, self._size, self._closed = dst, size, False
            if not self._registered:
                self._registered = True
                _batch.pending.append(self)
        return reason

    def flush(self) -> None:
        self._registered = False
        if self._dst is None:
            return
        dst, size, count, buf = self._dst, self._size, self._count, self._buf
        self._dst, self._count, self._buf = None, 0, bytearray()
        if count == 0:
            return
        if count == 1:
            if self._send_one(memoryview(buf), dst) is not None:
                stats.dropped += 1
            return
        try:
            self.sock.sendmsg([buf], [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", size))], 0, dst)
        except BlockingIOError:
            stats.dropped += count
            return
        except OSError as exc:
            if exc.errno == errno.EIO:  # no checksum offload towards dst: no GSO here
                self.enabled = False
        else:
            stats.coalesced += count
            return
        view = memoryview(buf)
        for start in range(0, len(buf), size):
            if self._send_one(view[start : start + size], dst) is not None:
                stats.dropped += 1

    def _send_one(self, payload: memoryview, dst: Endpoint) -> str | None:
        try:
            self.sock.sendto(payload, dst)
        except BlockingIOError:
            return "send buffer full"
        except OSError as exc:  # EMSGSIZE, ENETUNREACH, EPERM (an output filter) ...
            return exc.strerror or str(exc)
        return None
