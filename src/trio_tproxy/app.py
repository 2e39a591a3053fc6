"""The gateway process: the only owner of the nursery tree.

Lifetimes nest as hypercorn's trio worker does: process > flows > listeners. On
SIGTERM/SIGINT the listeners are cancelled and closed first (no new flows), then the
flows nursery gets a deadline of ``policy.grace`` to drain before it is cancelled.
SIGHUP reloads the configuration: new flows use the new runtime, established flows keep
the one they started with; a bad new config is logged and the old one keeps running.
"""

from __future__ import annotations

import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from . import __version__
from .addr import SockAddr
from .api import Controller, open_api_listener, serve_api
from .config import ApiConfig, Config, ConfigErrors, Inbound, load_config
from .dns.server import DnsListener, open_dns_listener
from .firewall.apply import AutoFirewall
from .inbound.tcp import accept_loop, open_tcp_listener
from .inbound.udp import open_udp_listener
from .limits import check_connection_budget, raise_nofile_limit
from .notify import Notifier
from .outbound import UnavailableOutbound
from .runtime import Runtime, not_yet_in_effect
from .session import handle_tcp
from .sock import set_reset_on_close
from .udp.service import UdpService

log = logging.getLogger("trio_tproxy.app")


class Gateway:
    def __init__(self, config_path: Path, runtime: Runtime) -> None:
        self.config_path = config_path
        self.runtime = runtime
        self.active_flows = 0
        self._over_limit_logged = False
        self.udp_services: list[UdpService] = []  # the controller API reads their counters

    def _handler(
        self, inbound: Inbound
    ) -> Callable[[socket.socket, SockAddr, SockAddr], Awaitable[None]]:
        async def on_connection(conn: socket.socket, src: SockAddr, dst: SockAddr) -> None:
            rt = self.runtime
            if self.active_flows >= rt.config.policy.max_connections:
                if not self._over_limit_logged:
                    log.warning(
                        "connection limit reached (policy.max_connections = %d): "
                        "refusing new flows until some end",
                        rt.config.policy.max_connections,
                    )
                    self._over_limit_logged = True
                set_reset_on_close(conn)
                conn.close()
                return
            self._over_limit_logged = False
            self.active_flows += 1
            try:
                await handle_tcp(rt, inbound, conn, src, dst)
            finally:
                self.active_flows -= 1

        return on_connection

    def reload(self) -> None:
        try:
            runtime = Runtime.build(
                load_config(self.config_path),
                pipes=self.runtime.flow_context.pool.pipes,
                router_cache=self.runtime.router_cache,
                tracker=self.runtime.tracker,
            )
        except ConfigErrors as exc:
            log.error("reload rejected, keeping the running configuration:")
            for error in exc.errors:
                log.error("  %s", error)
            return
        warn_not_yet_in_effect(runtime.config)
        if runtime.config.inbounds != self.runtime.config.inbounds:
            log.warning("inbound changes take effect on restart; other changes applied")
        if runtime.config.dns.listen != self.runtime.config.dns.listen:
            log.warning("dns.listen changes take effect on restart; other changes applied")
        if runtime.config.api != self.runtime.config.api:
            log.warning("[api] changes take effect on restart; other changes applied")
        self.runtime = runtime
        log.info("configuration reloaded from %s", self.config_path)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.runtime.config
        nofile = raise_nofile_limit()
        check_connection_budget(cfg.policy.max_connections, nofile)
        for ob in self.runtime.outbounds.values():
            if isinstance(ob, UnavailableOutbound):
                log.warning("outbound %r (%s) is not implemented yet: flows routed to it are "
                            "refused", ob.tag, ob.kind)  # fmt: skip
        tcp_inbounds = [ib for ib in cfg.inbounds if "tcp" in ib.network]
        udp_inbounds = [ib for ib in cfg.inbounds if "udp" in ib.network]
        if self.runtime.dns.uses_system_resolver:
            log.info("dns.servers is empty: names are resolved by the system resolver")
        firewall = AutoFirewall.prepare(cfg)  # firewall.auto; clears a crashed run's leftovers
        listeners = []
        notifier = Notifier()  # systemd Type=notify: a no-op without $NOTIFY_SOCKET
        dns_listeners: list[DnsListener] = []
        udp_services = self.udp_services
        api_sock = None
        try:
            for ib in tcp_inbounds:
                listeners.append((ib, open_tcp_listener(ib)))
            for ib in udp_inbounds:
                udp_services.append(UdpService(ib, open_udp_listener(ib), lambda: self.runtime))
            dns_listeners += [open_dns_listener(where) for where in cfg.dns.listen]
            if cfg.api is not None:
                api_sock = open_api_listener(cfg.api.listen)
            firewall.apply()  # once every listener is bound: diverted packets find one
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                async with trio.open_nursery() as flows:
                    for udp in udp_services:  # UDP sessions drain with the flows
                        await flows.start(udp.run)
                    async with trio.open_nursery() as accepting:
                        for ib, sock in listeners:
                            accepting.start_soon(accept_loop, sock, ib, self._handler(ib), flows)
                        for dns in dns_listeners:
                            accepting.start_soon(dns.serve, lambda: self.runtime.dns)
                        if api_sock is not None and cfg.api is not None:  # stops with them
                            await accepting.start(serve_api, api_sock, self._controller(cfg.api))
                        log.info("ready: %s", ", ".join([
                            *(f"{ib.tag} ({ib.TYPE}) on tcp {_where(ib)}" for ib, _ in listeners),
                            *(f"{u.inbound.tag} ({u.inbound.TYPE}) on udp {_where(u.inbound)}"
                              for u in udp_services),
                            *(f"dns on udp+tcp {dns.where}" for dns in dns_listeners),
                        ]))  # fmt: skip
                        notifier.ready(f"{self.active_flows} active flow(s)")
                        if (every := notifier.watchdog_interval()) is not None:
                            accepting.start_soon(notifier.watchdog, every)
                        task_status.started()
                        async for signum in sigs:
                            if signum == signal.SIGHUP:
                                notifier.reloading()
                                self.reload()
                                notifier.ready(f"{self.active_flows} active flow(s)")
                                continue
                            break
                        accepting.cancel_scope.cancel()
                    _close_listeners(listeners)
                    for udp in udp_services:
                        udp.drain()
                    for dns in dns_listeners:
                        dns.close()
                    grace = self.runtime.config.policy.grace.seconds
                    notifier.stopping(f"draining {self.active_flows} flow(s)")
                    log.info("stopping: no new flows; %d active flow(s) get %gs to finish",
                             self.active_flows, grace)  # fmt: skip
                    flows.cancel_scope.deadline = trio.current_time() + grace
            log.info("stopped")
        finally:
            _close_listeners(listeners)
            for udp in udp_services:
                udp.close_listener()
            for dns in dns_listeners:
                dns.close()
            if api_sock is not None:
                api_sock.close()
            firewall.remove()  # after the drain: established flows needed the rules
            notifier.close()

    def _controller(self, api: ApiConfig) -> Controller:
        ui_dir = Path(api.ui_dir) if api.ui_dir else None
        if ui_dir is not None and not ui_dir.is_dir():
            log.warning("api.ui_dir %s is not a directory: /ui/ answers 404", ui_dir)
        return Controller(self, secret=api.secret, ui_dir=ui_dir, version=__version__)


def _where(ib: Inbound) -> str:
    return f"[{ib.listen}]:{ib.port}" if ":" in ib.listen else f"{ib.listen}:{ib.port}"


def _close_listeners(listeners: list[tuple[Inbound, socket.socket]]) -> None:
    for _, sock in listeners:
        if sock.fileno() >= 0:
            trio.lowlevel.notify_closing(sock)
            sock.close()


def warn_not_yet_in_effect(cfg: Config) -> None:
    for warning in not_yet_in_effect(cfg):
        log.warning("%s", warning)
