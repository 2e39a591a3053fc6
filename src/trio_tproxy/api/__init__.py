"""The controller API (mihomo-compatible), /metrics and a dashboard at /ui/.

The listening socket is bound with the gateway's other listeners (so a busy port fails
the start like any other), and :func:`serve_api` runs in the gateway's nursery: it stops
with the listeners when the gateway drains. Connections are capped at
``MAX_API_CONNECTIONS``; past that a new one is closed at once.
"""

from __future__ import annotations

import logging
import socket
from functools import partial

import trio

from ..config import HostPort
from ..inbound.sockopt import SocketSetupError
from ..logs import ROOT
from .controller import Controller, GatewayView
from .http import serve_connection
from .loghub import LogHub

log = logging.getLogger("trio_tproxy.api")

# A dashboard opens about six connections (four streams, a few requests); a handful of
# dashboards and a Prometheus scraper fit well within this.
MAX_API_CONNECTIONS = 64
BACKLOG = 64

__all__ = ["Controller", "GatewayView", "open_api_listener", "serve_api"]


def open_api_listener(listen: HostPort) -> socket.socket:
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    try:
        sock = socket.create_server((listen.host, listen.port), family=family, backlog=BACKLOG)
    except OSError as exc:
        raise SocketSetupError(
            exc.errno, f"api.listen {listen.host}:{listen.port}: {exc.strerror or exc}"
        ) from exc
    sock.setblocking(False)
    return sock


async def serve_api(
    sock: socket.socket,
    controller: Controller,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; installs the /logs handler for as long as it runs."""
    hub = LogHub()
    root = logging.getLogger(ROOT)
    root.addHandler(hub)
    controller.logs = hub
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    host, port = sock.getsockname()[:2]
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    active = [0]
    try:
        async with listener, trio.open_nursery() as nursery:
            log.info("controller API on http://%s%s", where,
                     " (dashboard at /ui/)" if controller.ui_dir else "")  # fmt: skip
            task_status.started()
            await trio.serve_listeners(
                partial(_connection, controller, active), [listener], handler_nursery=nursery
            )
    finally:
        root.removeHandler(hub)


async def _connection(controller: Controller, active: list[int], stream: trio.SocketStream) -> None:
    if active[0] >= MAX_API_CONNECTIONS:
        await trio.aclose_forcefully(stream)
        return
    active[0] += 1
    try:
        await serve_connection(stream, controller.handle, controller.common_headers)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the client went away
    except Exception:
        log.exception("internal error in a controller API connection")
    finally:
        active[0] -= 1
        await trio.aclose_forcefully(stream)
