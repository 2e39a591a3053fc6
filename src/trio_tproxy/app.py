"""The gateway process: the only owner of the nursery tree.

Lifetimes nest as hypercorn's trio worker does: process > flows > listeners. On
SIGTERM/SIGINT the listeners are cancelled and closed first (no new flows), then the
flows nursery gets a deadline of ``policy.grace`` to drain before it is cancelled.
SIGHUP reloads the configuration: the next runtime is built in a worker thread (the loop
keeps relaying meanwhile) and swapped in when ready; new flows use it, established flows
keep the one they started with; a bad new config is logged and the old one keeps running.
SIGHUPs that arrive during a build coalesce into one more build after it.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path

import attrs
import trio

from . import __version__
from .addr import SockAddr
from .api import Controller, open_api_listener, serve_api
from .config import ApiConfig, Config, ConfigErrors, Inbound, load_config
from .dns.server import DnsListener, open_dns_listener
from .dns.service import DnsService
from .firewall.apply import AutoFirewall
from .inbound.tcp import accept_loop, open_tcp_listener
from .inbound.udp import open_udp_listener
from .limits import check_connection_budget, raise_nofile_limit
from .notify import Notifier
from .outbound import UnavailableOutbound
from .outbound.group import probe_groups
from .outbound.health import probe_delay
from .runtime import Runtime, not_yet_in_effect, quiet_build
from .session import handle_tcp
from .sock import set_reset_on_close
from .udp.service import UdpService

log = logging.getLogger("trio_tproxy.app")

# A replaced runtime is cyclic garbage once no flow holds it, freed by a full collection.
# The build sends the new runtime straight to the oldest generation (runtime.quiet_build),
# so reloads no longer trigger full collections by themselves: the replaced runtimes wait
# for the next one the process makes anyway. To bound the memory they hold (~15-20 MB
# each with conf/main.toml's lists), a reload that finds more than this many of them
# still in memory runs a full collection before it builds (a pass over everything:
# ~40-100 ms of GIL here, which is why it is not done at every reload).
RETIRED_RUNTIMES_KEPT = 2


class Gateway:
    def __init__(self, config_path: Path, runtime: Runtime) -> None:
        self.config_path = config_path
        self.runtime = runtime
        self.active_flows = 0
        self._over_limit_logged = False
        self._probing = trio.CancelScope()  # the running runtime's group probers
        self._reload_wanted = trio.Event()
        self._firewall = AutoFirewall(None)  # firewall.auto: set by serve()
        # replaced runtimes, until freed: by their DNS service, which sits in a reference
        # cycle (the runtime object itself may go by refcount, leaving the cycle behind)
        self._retired: list[weakref.ref[DnsService]] = []
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

    def request_reload(self) -> None:
        """Ask for a reload (SIGHUP, the controller API): it runs in the background; asked
        again while a build runs, one more build follows it (requests coalesce)."""
        self._reload_wanted.set()

    async def reload(self) -> None:
        """Build the next runtime off the loop from the config file and swap it in."""
        old = self.runtime
        log.info("reloading the configuration from %s", self.config_path)
        self._collect_retired()
        runtime = await self._build(old)
        if runtime is None:
            return
        await self._reapply_firewall(runtime, old)
        runtime.dns.adopt(old.dns)  # the DNS cache and reverse map outlive the reload
        warn_not_yet_in_effect(runtime.config)
        if runtime.config.inbounds != old.config.inbounds:
            log.warning("inbound changes take effect on restart; other changes applied")
        if runtime.config.dns.listen != old.config.dns.listen:
            log.warning("dns.listen changes take effect on restart; other changes applied")
        if runtime.config.api != old.config.api:
            log.warning("[api] changes take effect on restart; other changes applied")
        self.runtime = runtime
        log.info("configuration reloaded from %s", self.config_path)
        self._retired.append(weakref.ref(old.dns))

    def _collect_retired(self) -> None:
        """Free the runtimes earlier reloads replaced once too many wait (see the top)."""
        self._retired = [ref for ref in self._retired if ref() is not None]
        if len(self._retired) > RETIRED_RUNTIMES_KEPT:
            gc.collect()
            self._retired = [ref for ref in self._retired if ref() is not None]

    async def _build(self, old: Runtime) -> Runtime | None:
        """The next runtime, built in a worker thread; None (logged) if it cannot be."""
        try:
            return await trio.to_thread.run_sync(self._build_next, old, abandon_on_cancel=True)
        except ConfigErrors as exc:
            log.error("reload rejected, keeping the running configuration:")
            for error in exc.errors:
                log.error("  %s", error)
        except Exception as exc:  # an unforeseen failure must not take the gateway down
            log.error("reload failed, keeping the running configuration: %r", exc)
        return None

    async def _reapply_firewall(self, runtime: Runtime, old: Runtime) -> None:
        """firewall.auto: re-applied when its ruleset changed, with the running inbounds
        (the listeners keep theirs until a restart). Not abandoned on cancel: the exit's
        removal must not race a ruleset still being installed."""
        running = attrs.evolve(runtime.config, inbounds=old.config.inbounds)
        try:
            await trio.to_thread.run_sync(self._firewall.reload, running)
        except Exception as exc:  # reload() logs what it expects; nothing may stop serving
            log.error("firewall: not re-applied, the applied ruleset stays: %r", exc)

    def _build_next(self, old: Runtime) -> Runtime:
        """In a worker thread: load and compile, keeping the running pipe pool and cache."""
        with quiet_build():
            return Runtime.build(
                load_config(self.config_path),
                pipes=old.flow_context.pool.pipes,
                router_cache=old.router_cache,
                groups=old.groups,  # probe history and selector choices outlive the reload
                tracker=old.tracker,  # the open flows the API lists
            )

    async def _reloads(self, notifier: Notifier, nursery: trio.Nursery) -> None:
        """One build at a time: SIGHUPs during a build ask for one more build after it.
        The group probers follow the runtime in use (``nursery``: where they run)."""
        while True:
            await self._reload_wanted.wait()
            self._reload_wanted = trio.Event()
            notifier.reloading()
            await self.reload()
            self._start_probers(nursery)
            notifier.ready(f"{self.active_flows} active flow(s)")

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.runtime.config
        nofile = raise_nofile_limit()
        check_connection_budget(cfg.policy.max_connections, nofile)
        for ob in self.runtime.outbounds.values():
            if getattr(ob, "insecure", False):  # trojan with insecure = true
                log.warning("outbound %r: insecure = true: the server's certificate is not "
                            "verified (anyone on the path can read and change its traffic)",
                            ob.tag)  # fmt: skip
            if isinstance(ob, UnavailableOutbound):
                log.warning("outbound %r (%s) is not implemented yet: flows routed to it are "
                            "refused", ob.tag, ob.kind)  # fmt: skip
        tcp_inbounds = [ib for ib in cfg.inbounds if "tcp" in ib.network]
        udp_inbounds = [ib for ib in cfg.inbounds if "udp" in ib.network]
        if self.runtime.dns.uses_system_resolver:
            log.info("dns.servers is empty: names are resolved by the system resolver")
        self._firewall = firewall = AutoFirewall.prepare(cfg)  # clears a crashed run's leftovers
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
                        self._start_probers(accepting)
                        accepting.start_soon(self._reloads, notifier, accepting)
                        task_status.started()
                        async for signum in sigs:
                            if signum == signal.SIGHUP:
                                self.request_reload()
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

        async def prober(outbound: object, url: str, timeout: float) -> int:  # noqa: ASYNC109
            # the API's delay tests: one probe through the outbound's own path, names
            # resolved by the running runtime's DNS (for direct)
            return await probe_delay(outbound, url, timeout, resolver=self.runtime.dns)

        return Controller(self, secret=api.secret, ui_dir=ui_dir, version=__version__,
                          prober=prober)  # fmt: skip


    def _start_probers(self, nursery: trio.Nursery) -> None:
        """Probe the current runtime's groups (the previous runtime's probers stop)."""
        self._probing.cancel()
        self._probing = scope = trio.CancelScope()
        outbounds = self.runtime.outbounds

        async def probe() -> None:
            with scope:
                await probe_groups(outbounds)

        nursery.start_soon(probe)


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
