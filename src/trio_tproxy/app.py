"""The gateway process: the only owner of the nursery tree.

Lifetimes nest as hypercorn's trio worker does: process > flows > listeners. On
SIGTERM/SIGINT the listeners are cancelled and closed first (no new flows), then the
flows nursery gets a deadline of ``policy.grace`` to drain before it is cancelled.
SIGHUP reloads the configuration: the next runtime is built in a worker thread (the loop
keeps relaying meanwhile) and swapped in when ready; new flows use it, established flows
keep the one they started with; a bad new config is logged and the old one keeps running.
SIGHUPs that arrive during a build coalesce into one more build after it.

With ``[process] workers`` > 1 the same class serves one share of the gateway in each
process (:class:`Part`, workers/supervisor.py): a worker serves the inbounds on its own
SO_REUSEPORT sockets, the hub serves dns.listen, the controller API and the group
probes; the supervisor binds, applies the firewall and speaks to systemd.
"""

from __future__ import annotations

import gc
import logging
import signal
import socket
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from . import __version__
from .addr import SockAddr
from .config import ApiConfig, Config, ConfigErrors, Inbound, load_config
from .dns.service import DnsService
from .firewall.apply import AutoFirewall
from .inbound.tcp import accept_loop
from .limits import check_connection_budget, pipe_budget, raise_nofile_limit
from .listeners import Listeners
from .notify import Notifier
from .outbound import UnavailableOutbound
from .outbound.group import probe_groups
from .outbound.health import probe_delay
from .runtime import Runtime, not_yet_in_effect, quiet_build
from .session import handle_tcp
from .sock import set_reset_on_close
from .udp.service import UdpService

if TYPE_CHECKING:
    from .api import Controller
    from .api.flows import FlowsView

log = logging.getLogger("trio_tproxy.app")

# A replaced runtime is cyclic garbage once no flow holds it, freed by a full collection.
# The build sends the new runtime straight to the oldest generation (runtime.quiet_build),
# so reloads no longer trigger full collections by themselves: the replaced runtimes wait
# for the next one the process makes anyway. To bound the memory they hold (~15-20 MB
# each with conf/main.toml's lists), a reload that finds more than this many of them
# still in memory runs a full collection before it builds (a pass over everything:
# ~40-100 ms of GIL here, which is why it is not done at every reload).
RETIRED_RUNTIMES_KEPT = 2


@attrs.frozen
class Part:
    """The share of the gateway one process serves. The default is all of it (one
    process); workers/supervisor.py gives each worker and the hub theirs."""

    name: str = ""  # "" alone; "hub"; "w1".."wN" (log lines and process names)
    workers: int = 1  # processes sharing the inbounds: each takes 1/workers of the limits
    inbounds: bool = True  # the TCP/UDP inbound listeners
    services: bool = True  # dns.listen, the controller API, the group probes
    leader: bool = True  # speaks for the config: firewall, systemd, start/reload warnings


class Companion(Protocol):
    """What runs beside a part of a multi-process gateway (workers/): its link to the
    other processes. ``start`` runs it in the part's nursery; ``adopt`` sees every
    runtime the part takes (at start and at each reload)."""

    async def run(self, gateway: Gateway) -> None: ...

    def adopt(self, runtime: Runtime) -> None: ...

    def flows(self, gateway: Gateway) -> FlowsView | None: ...


Report = Callable[[str], None]  # a part's word to the supervisor: "ready", "reloaded", "failed"


class Gateway:
    def __init__(
        self,
        config_path: Path,
        runtime: Runtime,
        *,
        part: Part | None = None,
        listeners: Listeners | None = None,
        companion: Companion | None = None,
        report: Report | None = None,
    ) -> None:
        self.config_path = config_path
        self.part = part or Part()
        self.runtime = self._localize(runtime)
        self.active_flows = 0
        self._over_limit_logged = False
        self._probing = trio.CancelScope()  # the running runtime's group probers
        self._reload_wanted = trio.Event()
        self._firewall = AutoFirewall(None)  # firewall.auto: set by serve()
        # replaced runtimes, until freed: by their DNS service, which sits in a reference
        # cycle (the runtime object itself may go by refcount, leaving the cycle behind)
        self._retired: list[weakref.ref[DnsService]] = []
        self.udp_services: list[UdpService] = []  # the controller API reads their counters
        self._listeners = listeners  # bound by the supervisor; None: serve() binds
        self._companion = companion
        self._report = report or (lambda word: None)
        self.controller: Controller | None = None  # the API's, while it serves
        if companion is not None:
            companion.adopt(self.runtime)

    def _localize(self, runtime: Runtime) -> Runtime:
        """This process's share of the runtime's limits: with N workers each gets 1/N
        of policy.max_connections, the UDP sessions and the reply sockets, so all of
        them together keep to what the config says."""
        share = self.part.workers
        self.flow_limit = -(-runtime.config.policy.max_connections // share)
        if share == 1:
            return runtime
        limits = runtime.udp_limits
        pipes = runtime.flow_context.pool.pipes
        if pipes is not None:  # (a reload keeps the pool: its limit is set afresh)
            pipes.limit = -(-pipe_budget(runtime.config.policy.max_connections) // share)
        return attrs.evolve(runtime, udp_limits=attrs.evolve(
            limits, max_sessions=-(-limits.max_sessions // share),
            max_reply_sockets=-(-limits.max_reply_sockets // share)))  # fmt: skip

    def _handler(
        self, inbound: Inbound
    ) -> Callable[[socket.socket, SockAddr, SockAddr], Awaitable[None]]:
        async def on_connection(conn: socket.socket, src: SockAddr, dst: SockAddr) -> None:
            rt = self.runtime
            if self.active_flows >= self.flow_limit:
                if not self._over_limit_logged:
                    log.warning(
                        "connection limit reached (policy.max_connections = %d%s): "
                        "refusing new flows until some end",
                        rt.config.policy.max_connections,
                        f", {self.flow_limit} per worker" if self.part.workers > 1 else "",
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

    async def reload(self) -> bool:
        """Build the next runtime off the loop from the config file and swap it in;
        False (logged) when the file is not taken."""
        old = self.runtime
        leader = self.part.leader
        if leader:
            log.info("reloading the configuration from %s", self.config_path)
        self._collect_retired()
        runtime = await self._build(old)
        if runtime is None:
            return False
        runtime = self._localize(runtime)
        if leader:
            await self._reapply_firewall(runtime, old)
        runtime.dns.adopt(old.dns)  # the DNS cache and reverse map outlive the reload
        if leader:
            warn_not_yet_in_effect(runtime.config)
            warn_restart_only(runtime.config, old.config)
        self.runtime = runtime
        if self._companion is not None:
            self._companion.adopt(runtime)
        if leader:
            log.info("configuration reloaded from %s", self.config_path)
        else:
            log.debug("took the new configuration")
        self._retired.append(weakref.ref(old.dns))
        return True

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
            taken = await self.reload()
            self._report("reloaded" if taken else "failed")
            if self.part.services:
                self._start_probers(nursery)
            notifier.ready(f"{self.active_flows} active flow(s)")

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.runtime.config
        part = self.part
        if part.leader:
            check_connection_budget(cfg.policy.max_connections, raise_nofile_limit())
            warn_at_start(self.runtime)
        # systemd Type=notify: a no-op without $NOTIFY_SOCKET (the parts of several never
        # have it: the supervisor speaks for them)
        notifier = Notifier()
        udp_services = self.udp_services
        bound = self._listeners
        firewall = self._firewall
        try:
            if bound is None:
                self._firewall = firewall = AutoFirewall.prepare(cfg)  # clears leftovers
                bound = Listeners.open(cfg, inbounds=part.inbounds, services=part.services)
            for ib, sock in bound.udp:
                udp_services.append(UdpService(ib, sock, lambda: self.runtime))
            if part.leader:
                firewall.apply()  # once every listener is bound: diverted packets find one
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
                async with trio.open_nursery() as flows:
                    for udp in udp_services:  # UDP sessions drain with the flows
                        await flows.start(udp.run)
                    async with trio.open_nursery() as accepting:
                        for ib, sock in bound.tcp:
                            accepting.start_soon(accept_loop, sock, ib, self._handler(ib), flows)
                        for dns in bound.dns:
                            accepting.start_soon(dns.serve, lambda: self.runtime.dns)
                        if bound.api is not None and cfg.api is not None:  # stops with them
                            from .api import serve_api  # noqa: PLC0415 (the API only when on)

                            await accepting.start(serve_api, bound.api, self._controller(cfg.api))
                        if self._companion is not None:
                            accepting.start_soon(self._companion.run, self)
                        self._log_ready(bound)
                        notifier.ready(f"{self.active_flows} active flow(s)")
                        if (every := notifier.watchdog_interval()) is not None:
                            accepting.start_soon(notifier.watchdog, every)
                        if part.services:
                            self._start_probers(accepting)
                        accepting.start_soon(self._reloads, notifier, accepting)
                        self._report("ready")
                        task_status.started()
                        async for signum in sigs:
                            if signum == signal.SIGHUP:
                                self.request_reload()
                                continue
                            break
                        accepting.cancel_scope.cancel()
                    bound.close_inbounds()
                    for udp in udp_services:
                        udp.drain()
                    bound.close_services()
                    grace = self.runtime.config.policy.grace.seconds
                    notifier.stopping(f"draining {self.active_flows} flow(s)")
                    log.info("stopping: no new flows; %d active flow(s) get %gs to finish",
                             self.active_flows, grace)  # fmt: skip
                    flows.cancel_scope.deadline = trio.current_time() + grace
            log.info("stopped")
        finally:
            if bound is not None:
                bound.close()
            for udp in udp_services:
                udp.close_listener()
            firewall.remove()  # after the drain: established flows needed the rules
            notifier.close()

    def _log_ready(self, bound: Listeners) -> None:
        what = ", ".join(bound.describe())
        if self.part.leader:
            log.info("ready: %s", what)
        else:  # the supervisor says "ready:" once every part is
            log.info("serving: %s", what or "the controller API and group probes")

    def flows(self) -> FlowsView:
        """The flows the controller API shows: this process's, or (in the hub) every
        worker's through the companion."""
        if self._companion is not None and (remote := self._companion.flows(self)) is not None:
            return remote
        from .api.flows import LocalFlows  # noqa: PLC0415 (the API only when on)

        return LocalFlows(lambda: self.runtime, self.udp_services)

    def _controller(self, api: ApiConfig) -> Controller:
        from .api import Controller  # noqa: PLC0415 (the API only when on)

        ui_dir = Path(api.ui_dir) if api.ui_dir else None
        if ui_dir is not None and not ui_dir.is_dir():
            log.warning("api.ui_dir %s is not a directory: /ui/ answers 404", ui_dir)

        async def prober(outbound: object, url: str, timeout: float) -> int:  # noqa: ASYNC109
            # the API's delay tests: one probe through the outbound's own path, names
            # resolved by the running runtime's DNS (for direct)
            return await probe_delay(outbound, url, timeout, resolver=self.runtime.dns)

        self.controller = Controller(self, secret=api.secret, ui_dir=ui_dir,
                                     version=__version__, prober=prober)  # fmt: skip
        return self.controller

    def _start_probers(self, nursery: trio.Nursery) -> None:
        """Probe the current runtime's groups (the previous runtime's probers stop)."""
        self._probing.cancel()
        self._probing = scope = trio.CancelScope()
        outbounds = self.runtime.outbounds

        async def probe() -> None:
            with scope:
                await probe_groups(outbounds)

        nursery.start_soon(probe)


def warn_at_start(runtime: Runtime) -> None:
    """What the one process, or the supervisor of several, says once at start."""
    for ob in runtime.outbounds.values():
        if getattr(ob, "insecure", False):  # trojan with insecure = true
            log.warning("outbound %r: insecure = true: the server's certificate is not "
                        "verified (anyone on the path can read and change its traffic)",
                        ob.tag)  # fmt: skip
        if isinstance(ob, UnavailableOutbound):
            log.warning("outbound %r (%s) is not implemented yet: flows routed to it are "
                        "refused", ob.tag, ob.kind)  # fmt: skip
    if runtime.dns.uses_system_resolver:
        log.info("dns.servers is empty: names are resolved by the system resolver")


def warn_restart_only(new: Config, old: Config) -> None:
    """Changes a reload cannot apply: said once, by whoever speaks for the config."""
    if new.inbounds != old.inbounds:
        log.warning("inbound changes take effect on restart; other changes applied")
    if new.dns.listen != old.dns.listen:
        log.warning("dns.listen changes take effect on restart; other changes applied")
    if new.api != old.api:
        log.warning("[api] changes take effect on restart; other changes applied")
    if new.process != old.process:
        log.warning("[process] changes take effect on restart; other changes applied")


def warn_not_yet_in_effect(cfg: Config) -> None:
    for warning in not_yet_in_effect(cfg):
        log.warning("%s", warning)
