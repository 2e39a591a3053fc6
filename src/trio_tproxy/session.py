"""One TCP flow: original destination -> sniff -> facts -> decision -> outbound -> relay.

Everything a flow can raise is handled here, once: expected network failures end the
flow with a reason in the access log; anything else is a bug, logged with its traceback
at error level, and still only ends this flow. Nothing but ``trio.Cancelled`` leaves
:func:`handle_tcp`, so one broken flow never reaches the server's nursery.
"""

from __future__ import annotations

import logging
import socket

import trio

from .access import FlowRecord, log_access
from .addr import SockAddr
from .addr import show as show_addr
from .config import Inbound
from .inbound.sockopt import is_local_address
from .outbound import DialError, TcpFlow
from .outbound.base import FlowRefused, LocalAnswer, SocketUpstream, stream_capable
from .relay import relay, send_all
from .relay_stream import relay_stream
from .route import FlowFacts
from .runtime import Runtime
from .sniff import NEED_MORE, STREAM_MAX_PEEK, Sniffed, sniff_stream
from .sock import close_unwatched, set_reset_on_close
from .tracking import TrackedFlow

log = logging.getLogger("trio_tproxy.session")

# Protocols whose server speaks first: waiting for the client to send would only add
# the sniff timeout to every connection (sing-box#2717). FTP, SSH, SMTP, POP3, NNTP,
# IMAP, submission, MySQL, VNC.
SERVER_FIRST_PORTS = frozenset({21, 22, 25, 110, 119, 143, 587, 3306, 5900})


async def peek(conn: socket.socket, deadline: float) -> tuple[bytes, Sniffed | None]:
    """Read the client's first bytes until a sniffer decides or ``deadline`` passes.

    Returns everything read (to be replayed upstream) and the sniff result, if any.
    """
    data = b""
    with trio.move_on_at(deadline):
        while len(data) < STREAM_MAX_PEEK:
            try:
                chunk = conn.recv(STREAM_MAX_PEEK - len(data))
            except BlockingIOError:
                await trio.lowlevel.wait_readable(conn)
                continue
            if not chunk:
                break
            data += chunk
            outcome = sniff_stream(data)
            if isinstance(outcome, Sniffed):
                return data, outcome
            if outcome is not NEED_MORE:
                break
    return data, None


def is_self_loop(rt: Runtime, dst: SockAddr) -> bool:
    """A flow addressed to one of our own listeners would dial itself forever."""
    return dst[1] in rt.own_ports and is_local_address(dst[0])


async def handle_tcp(
    rt: Runtime, inbound: Inbound, conn: socket.socket, src: SockAddr, dst: SockAddr
) -> None:
    record = FlowRecord(src, dst, inbound.tag)
    flow: TcpFlow | None = None
    tracked: TrackedFlow | None = None
    outcome = "done"
    try:
        if is_self_loop(rt, dst):
            outcome = "refused: destination is one of our own listeners (loop)"
            set_reset_on_close(conn)
            return
        # TCP_NODELAY: inherited from the listener (inbound/tcp.py)
        prefix, sniffed = b"", None
        sniffing = inbound.sniffing
        if sniffing.enabled and dst[1] not in SERVER_FIRST_PORTS:
            prefix, sniffed = await peek(conn, trio.current_time() + sniffing.timeout.seconds)
        override = None
        if sniffed is not None:
            record.protocol = sniffed.protocol
            record.domain = sniffed.domain
            override = rt.sniff_override(inbound, sniffed)
        # No domain sniffed, but we resolved this address for a client: route by that
        # name (sing-box's reverse mapping), as route_only would: ip rules still see the
        # address, and the outbound dials it.
        learnt = None
        if record.domain is None and rt.dns.reverse is not None:
            learnt = record.domain = rt.dns.reverse.lookup(dst[0])
        # After an override the target is the domain: under as_is, IP rules do not see
        # the original address (v2ray); route_only changes only what the outbound dials.
        facts = FlowFacts(
            network="tcp",
            dst_ip=None if override else dst[0],
            dst_port=dst[1],
            domain=override or learnt,
            src_ip=src[0],
            src_port=src[1],
            inbound_tag=inbound.tag,
            protocol=record.protocol,
        )
        record.decision = await rt.decide(facts)
        dial_domain = None if inbound.sniffing.route_only else override
        flow = TcpFlow(conn, dst, dial_domain, prefix, rt.flow_context)
        del prefix  # the flow's now: carry() lets go of it once sent
        with trio.CancelScope() as closer:  # the API's DELETE /connections cancels it
            tracked = rt.tracker.add(TrackedFlow("tcp", inbound.TYPE, record, flow, closer.cancel))
            await carry(flow, rt.outbounds[record.decision.outbound])
        outcome = flow.stats.outcome
        if closer.cancelled_caught:
            outcome = "closed by API"
            set_reset_on_close(conn)
    except DialError as exc:
        outcome = str(exc)
        set_reset_on_close(conn)
    except OSError as exc:  # the client broke while we sniffed or dialled
        outcome = f"client error: {exc.strerror or exc}"
        set_reset_on_close(conn)
    except Exception:
        log.exception("internal error in flow %s -> %s", show_addr(src), show_addr(dst))
        outcome = "internal error"
        set_reset_on_close(conn)
    except BaseException:  # trio.Cancelled (maybe in a group): cut at the drain deadline
        outcome = "cancelled"
        set_reset_on_close(conn)  # the client must not mistake a cut flow for a complete one
        raise
    finally:
        close_unwatched(conn)  # the flow's tasks (sniff, relay) have all ended
        if tracked is not None:
            rt.tracker.remove(tracked, outcome)
        if rt.config.log.access:
            _log_access(record, flow, outcome)


def _log_access(record: FlowRecord, flow: TcpFlow | None, outcome: str) -> None:
    up, down = (flow.stats.up, flow.stats.down) if flow else (0, 0)
    if flow:
        record.chain = flow.chain
    log_access(record, "tcp", up, down, outcome)


async def carry(flow: TcpFlow, outbound: object) -> None:
    """Ask ``outbound`` for the flow's upstream and relay the client over it.

    Raises DialError when the upstream cannot be had; the outcome of a flow that was
    carried lands in ``flow.stats.outcome``.
    """
    opener = stream_capable(outbound)
    if opener is None:
        raise DialError(0, f"outbound {getattr(outbound, 'tag', '?')!r} does not carry TCP")
    ctx = flow.ctx
    try:
        upstream = await opener.open_stream(
            flow.destination, timeout=ctx.handshake_timeout, initial=flow.prefix
        )
    except FlowRefused as refused:
        await _refuse(flow, refused)
        return
    flow.chain = upstream.chain
    stats = flow.stats
    flow.chain = upstream.chain
    if isinstance(upstream, LocalAnswer):
        client = trio.SocketStream(trio.socket.from_stdlib_socket(flow.client))

        def count(up: int, down: int) -> None:
            stats.up += up
            stats.down += down

        stats.outcome = await upstream.serve(client, flow.prefix, ctx.timeouts.idle, count)
        return
    stats.up += len(flow.prefix)  # the outbound sent them first
    flow.prefix = b""  # an idle flow keeps none of its first bytes (a ClientHello: ~2 KB)
    if isinstance(upstream, SocketUpstream):
        try:
            if upstream.early:
                await send_all(flow.client, upstream.early)
                stats.down += len(upstream.early)
            await relay(flow.client, upstream.sock, ctx.timeouts, ctx.pool, stats=stats)
        except BaseException:  # cancelled (drain deadline): reset, never a clean FIN
            set_reset_on_close(upstream.sock)
            raise
        finally:
            close_unwatched(upstream.sock)  # the relay's tasks have ended
    else:
        await relay_stream(flow.client, upstream.stream, ctx.timeouts, stats=stats, pool=ctx.pool)
    if upstream.outcome is not None and stats.outcome == "done":
        stats.outcome = upstream.outcome


async def _refuse(flow: TcpFlow, refused: FlowRefused) -> None:
    flow.stats.outcome = refused.outcome
    if not refused.response:
        return
    try:
        await send_all(flow.client, refused.response)
    except OSError:
        return
    flow.stats.down += len(refused.response)
    await trio.sleep(refused.linger)
