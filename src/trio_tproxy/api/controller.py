"""The controller: mihomo's routes, auth and CORS over the gateway's live state.

Auth and CORS as mihomo's ``hub/route/server.go``: a preflight (OPTIONS) is answered
without credentials; ``/ui/`` needs none; everything else, ``/metrics`` included, needs
``Authorization: Bearer <secret>`` when a secret is set, or ``?token=<secret>`` on a
WebSocket upgrade (browsers cannot set headers there). Errors are mihomo's
``{"message": ...}`` bodies with a 4xx status.
"""

from __future__ import annotations

import hmac
import logging
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

import attrs

from ..logs import ROOT
from ..runtime import Runtime
from . import metrics, proxies, shapes
from .feeds import connections_feed, logs_feed, memory_feed, traffic_feed
from .flows import FlowsView
from .groups import DelayProber
from .http import Feed, Reply, Request, json_reply, message
from .loghub import LogHub
from .lookup import dns_query
from .requests import BAD_REQUEST, NO_CONTENT, NOT_FOUND, json_object, positive_int
from .static import serve_file

log = logging.getLogger("trio_tproxy.api")

CORS = [
    ("access-control-allow-origin", "*"),
    ("access-control-allow-methods", "GET, POST, PUT, PATCH, DELETE"),
    ("access-control-allow-headers", "Content-Type, Authorization"),
    ("access-control-allow-private-network", "true"),
    ("access-control-max-age", "300"),
]
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR, "silent": logging.CRITICAL + 10}  # fmt: skip


class GatewayView(Protocol):
    """What the API reads of the running gateway (app.Gateway)."""

    @property
    def runtime(self) -> Runtime: ...

    def flows(self) -> FlowsView: ...  # this process's, or every worker's


UNAUTHORIZED = message(401, "Unauthorized")


@attrs.define
class Controller:
    gateway: GatewayView
    secret: str = ""
    ui_dir: Path | None = None
    prober: DelayProber | None = None  # outbound/health.py's probe_delay
    version: str = "0.0.0"
    logs: LogHub | None = None  # set while the server runs

    def common_headers(self, request: Request | None) -> list[tuple[str, str]]:
        return CORS

    async def handle(self, request: Request) -> Reply | Feed:
        try:
            return await self._handle(request)
        except Exception:  # a bug: this request fails, the API and the gateway go on
            log.exception("internal error answering %s %s", request.method, request.path)
            return message(500, "internal error")

    async def _handle(self, request: Request) -> Reply | Feed:
        if request.method == "OPTIONS":
            return NO_CONTENT  # preflight: CORS headers, no credentials needed
        segments = [seg for seg in request.raw_path.split("/") if seg]
        segments = [unquote(seg) for seg in segments]
        if segments[:1] == ["ui"]:
            return await self._ui(request)
        if not self._authorized(request):
            return UNAUTHORIZED
        return await self._route(request, segments)

    def _authorized(self, request: Request) -> bool:
        if not self.secret:
            return True
        token = request.query.get("token", "")
        if request.wants_websocket and token:
            return hmac.compare_digest(token.encode(), self.secret.encode())
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        return scheme == "Bearer" and hmac.compare_digest(value.encode(), self.secret.encode())

    async def _ui(self, request: Request) -> Reply:
        if request.method not in ("GET", "HEAD") or self.ui_dir is None:
            return NOT_FOUND
        if request.raw_path == "/ui":
            return Reply(307, b"", "text/plain", (("location", "/ui/"),))
        return await serve_file(self.ui_dir, request.path[len("/ui/") :])

    @property
    def runtime(self) -> Runtime:
        return self.gateway.runtime

    async def _route(self, request: Request, seg: list[str]) -> Reply | Feed:
        method, rt = request.method, self.runtime
        head = seg[0] if seg else ""
        if method == "GET" and not seg:
            return json_reply({"hello": "mihomo"})
        if method == "GET" and seg == ["version"]:
            return json_reply({"meta": True, "version": f"trio-tproxy {self.version}"})
        if head == "configs" and len(seg) == 1:
            return self._configs(request)
        if head == "proxies":
            return await proxies.proxies(rt, request, seg[1:], self.prober)
        if head == "group" and method == "GET":
            return await proxies.groups(rt, request, seg[1:])
        if method == "GET" and seg == ["rules"]:
            return json_reply({"rules": shapes.rules(rt.config)})
        if method == "GET" and seg in (["providers", "proxies"], ["providers", "rules"]):
            return json_reply({"providers": {}})
        if head == "connections":
            return await self._connections(request, seg[1:])
        if method == "GET" and len(seg) == 1 and head in ("traffic", "memory", "logs"):
            return self._stream(request, head)
        if method == "GET" and seg == ["dns", "query"]:
            return await dns_query(rt, request.query)
        if method == "GET" and seg == ["metrics"]:
            body = metrics.render(rt, await self.gateway.flows().metrics())
            return Reply(200, body, metrics.CONTENT_TYPE)
        return NOT_FOUND

    # -- /configs -----------------------------------------------------------------------

    def _configs(self, request: Request) -> Reply:
        if request.method == "GET":
            return json_reply(self._config_view())
        if request.method != "PATCH":
            return message(405, "Method not allowed")
        body = json_object(request.body)
        if body is None:
            return BAD_REQUEST
        level = body.get("log-level")
        if level is not None and level not in LOG_LEVELS:
            return message(400, f"unknown log level {level!r}")
        mode = body.get("mode")
        if mode is not None and str(mode).lower() != "rule":
            return message(400, "only the rule mode exists here")
        if level is not None:
            logging.getLogger(ROOT).setLevel(LOG_LEVELS[level])
            log.info("log level set to %s by the controller API", level)
        return NO_CONTENT

    def _config_view(self) -> dict[str, Any]:
        cfg = self.runtime.config
        ports = {"tproxy": 0, "redirect": 0}
        for ib in cfg.inbounds:
            if not ports[ib.TYPE]:
                ports[ib.TYPE] = ib.port
        level = logging.getLogger(ROOT).getEffectiveLevel()
        shown = next((n for n, v in LOG_LEVELS.items() if v >= level), "silent")
        return {
            "port": 0, "socks-port": 0, "redir-port": ports["redirect"],
            "tproxy-port": ports["tproxy"], "mixed-port": 0, "tun": {"enable": False},
            "allow-lan": True, "bind-address": "*", "mode": "rule", "mode-list": ["rule"],
            "modes": ["rule"], "log-level": shown, "ipv6": True, "authentication": [],
            "sniffing": any(ib.sniffing.enabled for ib in cfg.inbounds),
            "interface-name": "", "unified-delay": False, "tcp-concurrent": False,
            "find-process-mode": "off", "geodata-mode": False,
        }  # fmt: skip

    # -- /connections and the streams -----------------------------------------------------

    async def _connections(self, request: Request, seg: list[str]) -> Reply | Feed:
        flows = self.gateway.flows()
        if request.method == "DELETE" and not seg:
            closed = await flows.close_all()
            log.info("%d connection(s) closed by the controller API", closed)
            return NO_CONTENT
        if request.method == "DELETE" and len(seg) == 1:
            await flows.close(seg[0])
            return NO_CONTENT
        if request.method != "GET" or seg:
            return NOT_FOUND
        if not request.wants_websocket:
            return json_reply(await flows.connections())
        interval = positive_int(request.query.get("interval", "1000"), 3_600_000)
        if interval is None:
            return BAD_REQUEST
        return connections_feed(flows, interval / 1000)

    def _stream(self, request: Request, name: str) -> Reply | Feed:
        if name == "traffic":
            return traffic_feed(self.gateway.flows())
        if name == "memory":
            return memory_feed(self.gateway.flows())
        level = request.query.get("level") or "info"
        if level not in LOG_LEVELS or self.logs is None:
            return BAD_REQUEST
        return logs_feed(self.logs, LOG_LEVELS[level])
