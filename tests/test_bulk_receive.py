"""sock.BulkReceive: a bulk receiver wakes per BULK_LOWAT bytes, not per segment, and
never holds a flow's bytes back for more than BULK_LINGER."""

from __future__ import annotations

import socket

import trio

from trio_tproxy.sock import BULK_AFTER, BULK_LINGER, BULK_LOWAT, BulkReceive

from .test_relay import Pairs


def lowat(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT)


def drain(sock: socket.socket, bulk: BulkReceive) -> int:
    total = 0
    while True:
        try:
            n = len(sock.recv(1 << 20))
        except BlockingIOError:
            return total
        bulk.received(n)
        total += n


def roomy_pair(tcp_pairs: Pairs) -> tuple[socket.socket, socket.socket]:
    sender, receiver = tcp_pairs()
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    return sender, receiver


async def test_the_mark_goes_on_once_bulk_and_off_when_the_sender_pauses(
    tcp_pairs: Pairs,
) -> None:
    sender, receiver = roomy_pair(tcp_pairs)
    bulk = BulkReceive(receiver)
    got = 0
    with trio.fail_after(10):
        while got < BULK_AFTER:
            sender.send(b"x" * 65536)
            await bulk.wait()
            got += drain(receiver, bulk)
        assert lowat(receiver) == BULK_LOWAT  # bulk now: woken per 64 KiB
        # a sender that pauses: the wait lingers, finds nothing, and the mark goes
        bulk.received(0)
        start = trio.current_time()
        await bulk.wait()
        assert trio.current_time() - start < BULK_LINGER + 0.5
        bulk.received(0)
    assert lowat(receiver) == 1


async def test_a_tail_under_the_mark_is_read_after_the_linger(tcp_pairs: Pairs) -> None:
    """What follows a bulk phase (the last bytes, or a small reply) waits at most the
    linger, never for bytes that will not come."""
    sender, receiver = roomy_pair(tcp_pairs)
    bulk = BulkReceive(receiver)
    with trio.fail_after(10):
        while lowat(receiver) == 1:
            sender.send(b"x" * 65536)
            await bulk.wait()
            drain(receiver, bulk)
        sender.send(b"tail")
        start = trio.current_time()
        await bulk.wait()
        assert receiver.recv(100) == b"tail"
        assert trio.current_time() - start < 0.5


async def test_no_mark_when_the_receive_buffer_is_small(tcp_pairs: Pairs) -> None:
    """Setting the mark on a small buffer would make the kernel grow it and clamp the
    TCP window to the mark: a small buffer keeps waking per segment."""
    sender, receiver = tcp_pairs()
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    bulk = BulkReceive(receiver)
    with trio.fail_after(10):
        got = 0
        while got < 2 * BULK_AFTER:
            sender.send(b"x" * 8192)
            await bulk.wait()
            got += drain(receiver, bulk)
    assert lowat(receiver) == 1
