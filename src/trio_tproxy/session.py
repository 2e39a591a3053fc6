"""One TCP flow: original destination -> sniff -> facts -> decision -> outbound -> relay.

Everything a flow can raise is handled here, once: expected network failures end the
flow with a reason in the access log; anything else is a bug, logged with its traceback
at error level, and still only ends this flow. Nothing but ``trio.Cancelled`` leaves
:func:`handle_tcp`, so one broken flow never reaches the server's nursery.
"""

from __future__ import annotations

import logging
import socket

import attrs
import trio

from .config import Inbound
from .inbound.sockopt import SockAddr, is_local_address, set_reset_on_close
from .outbound import DialError, TcpFlow, close_socket
from .route import Decision, FlowFacts, NeedIps
from .runtime import Runtime
from .sniff import NEED_MORE, STREAM_MAX_PEEK, Sniffed, sniff_stream

log = logging.getLogger("trio_tproxy.session")
access_log = logging.getLogger("trio_tproxy.access")

# Protocols whose server speaks first: waiting for the client to send would only add
# the sniff timeout to every connection (sing-box#2717). FTP, SSH, SMTP, POP3, NNTP,
# IMAP, submission, MySQL, VNC.
SERVER_FIRST_PORTS = frozenset({21, 22, 25, 110, 119, 143, 587, 3306, 5900})


@attrs.define
class FlowRecord:
    """What the access log says about a flow when it ends."""

    src: SockAddr
    dst: SockAddr
    inbound: str
    started: float = attrs.field(factory=trio.current_time)
    domain: str | None = None
    protocol: str | None = None
    decision: Decision | None = None


def _show(addr: SockAddr) -> str:
    ip, port = addr
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


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


async def decide(rt: Runtime, facts: FlowFacts) -> Decision:
    outcome = rt.router.decide(facts)
    if isinstance(outcome, NeedIps):
        assert facts.domain is not None
        outcome = rt.router.decide(facts, await rt.resolver.resolve(facts.domain))
    assert not isinstance(outcome, NeedIps)
    return outcome


def is_self_loop(rt: Runtime, dst: SockAddr) -> bool:
    """A flow addressed to one of our own listeners would dial itself forever."""
    return dst[1] in rt.own_ports and is_local_address(dst[0])


async def handle_tcp(
    rt: Runtime, inbound: Inbound, conn: socket.socket, src: SockAddr, dst: SockAddr
) -> None:
    record = FlowRecord(src, dst, inbound.tag)
    flow: TcpFlow | None = None
    outcome = "done"
    try:
        if is_self_loop(rt, dst):
            outcome = "refused: destination is one of our own listeners (loop)"
            set_reset_on_close(conn)
            return
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
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
        record.decision = await decide(rt, facts)
        dial_domain = None if inbound.sniffing.route_only else override
        flow = TcpFlow(conn, dst, dial_domain, prefix, rt.flow_context)
        await rt.outbounds[record.decision.outbound].handle_tcp(flow)
        outcome = flow.stats.outcome
    except DialError as exc:
        outcome = str(exc)
        set_reset_on_close(conn)
    except OSError as exc:  # the client broke while we sniffed or dialled
        outcome = f"client error: {exc.strerror or exc}"
        set_reset_on_close(conn)
    except Exception:
        log.exception("internal error in flow %s -> %s", _show(src), _show(dst))
        outcome = "internal error"
        set_reset_on_close(conn)
    except BaseException:  # trio.Cancelled (maybe in a group): cut at the drain deadline
        outcome = "cancelled"
        set_reset_on_close(conn)  # the client must not mistake a cut flow for a complete one
        raise
    finally:
        close_socket(conn)
        if rt.config.log.access:
            _log_access(record, flow, outcome)


def _log_access(record: FlowRecord, flow: TcpFlow | None, outcome: str) -> None:
    up, down = (flow.stats.up, flow.stats.down) if flow else (0, 0)
    log_access(record, "tcp", up, down, outcome)


def log_access(
    record: FlowRecord, network: str, up: int, down: int, outcome: str, *, detail: str = ""
) -> None:
    """The access-log line of a TCP connection or a UDP flow (``detail``: datagrams)."""
    d = record.decision
    routed = "-"
    if d is not None:
        routed = f"{d.outbound} ({'default' if d.rule_index is None else f'rule #{d.rule_index}'})"
    access_log.info(
        "%s -> %s%s %s %s -> %s up=%d down=%d%s %.3fs %s",
        _show(record.src), _show(record.dst),
        f" [{record.domain}]" if record.domain else "",
        f"{network}/{record.protocol}" if record.protocol else network,
        record.inbound, routed, up, down, detail,
        trio.current_time() - record.started, outcome,
    )  # fmt: skip
