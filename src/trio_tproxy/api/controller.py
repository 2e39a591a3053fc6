"""The controller: mihomo's routes, auth and CORS over the gateway's live state.

Auth and CORS as mihomo's ``hub/route/server.go``: a preflight (OPTIONS) is answered
without credentials; ``/ui/`` needs none; everything else, ``/metrics`` included, needs
``Authorization: Bearer <secret>`` when a secret is set, or ``?token=<secret>`` on a
WebSocket upgrade (browsers cannot set headers there). Errors are mihomo's
``{"message": ...}`` bodies with a 4xx status.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote

import attrs
import trio

from ..config.schema import DEFAULT_PROBE_URL
from ..runtime import Runtime
from ..udp.service import UdpService
from . import metrics, shapes
from .feeds import connections_feed, logs_feed, memory_feed, traffic_feed
from .groups import DelayProber, as_group, health_of
from .http import Feed, Reply, Request, json_reply, message
from .lookup import dns_query
from .static import serve_file

log = logging.getLogger("trio_tproxy.api")

ROOT_LOGGER = "trio_tproxy"
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

    @property
    def udp_services(self) -> Sequence[UdpService]: ...


UNAUTHORIZED = message(401, "Unauthorized")
NOT_FOUND = message(404, "Resource not found")
BAD_REQUEST = message(400, "Body invalid")
NO_CONTENT = Reply(204)

Route = Callable[[Request, list[str]], Any]


@attrs.define
class Controller:
    gateway: GatewayView
    secret: str = ""
    ui_dir: Path | None = None
    prober: DelayProber | None = None  # outbound/health.py's probe_delay
    version: str = "0.0.0"
    logs: Any = None  # a LogHub while the server runs

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
            return await self._proxies(request, seg[1:])
        if head == "group" and method == "GET":
            return await self._group(request, seg[1:])
        if method == "GET" and seg == ["rules"]:
            return json_reply({"rules": shapes.rules(rt.config)})
        if method == "GET" and seg in (["providers", "proxies"], ["providers", "rules"]):
            return json_reply({"providers": {}})
        if head == "connections":
            return self._connections(request, seg[1:])
        if method == "GET" and len(seg) == 1 and head in ("traffic", "memory", "logs"):
            return self._stream(request, head)
        if method == "GET" and seg == ["dns", "query"]:
            return await dns_query(rt, request.query)
        if method == "GET" and seg == ["metrics"]:
            body = metrics.render(rt, self.gateway.udp_services)
            return Reply(200, body, metrics.CONTENT_TYPE)
        return NOT_FOUND

    # -- /configs -----------------------------------------------------------------------

    def _configs(self, request: Request) -> Reply:
        if request.method == "GET":
            return json_reply(self._config_view())
        if request.method != "PATCH":
            return message(405, "Method not allowed")
        body = _json_object(request.body)
        if body is None:
            return BAD_REQUEST
        level = body.get("log-level")
        if level is not None and level not in LOG_LEVELS:
            return message(400, f"unknown log level {level!r}")
        mode = body.get("mode")
        if mode is not None and str(mode).lower() != "rule":
            return message(400, "only the rule mode exists here")
        if level is not None:
            logging.getLogger(ROOT_LOGGER).setLevel(LOG_LEVELS[level])
            log.info("log level set to %s by the controller API", level)
        return NO_CONTENT

    def _config_view(self) -> dict[str, Any]:
        cfg = self.runtime.config
        ports = {"tproxy": 0, "redirect": 0}
        for ib in cfg.inbounds:
            if not ports[ib.TYPE]:
                ports[ib.TYPE] = ib.port
        level = logging.getLogger(ROOT_LOGGER).getEffectiveLevel()
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

    # -- /proxies, /group -----------------------------------------------------------------

    async def _proxies(self, request: Request, seg: list[str]) -> Reply:
        rt = self.runtime
        if not seg:
            if request.method != "GET":
                return message(405, "Method not allowed")
            return json_reply({"proxies": shapes.proxies(rt)})
        name = seg[0]
        known = name == "GLOBAL" or name in rt.outbounds
        if not known or len(seg) > 2 or (len(seg) == 2 and seg[1] != "delay"):
            return NOT_FOUND
        if len(seg) == 2:
            return await self._delay(request, name) if request.method == "GET" else NOT_FOUND
        if request.method == "GET":
            shown = shapes.proxies(rt)[name] if name == "GLOBAL" else shapes.proxy(rt, name)
            return json_reply(shown)
        if request.method == "PUT":
            return self._select(request, name)
        return message(405, "Method not allowed")

    def _select(self, request: Request, name: str) -> Reply:
        body = _json_object(request.body)
        member = body.get("name") if body is not None else None
        if not isinstance(member, str):
            return BAD_REQUEST
        group = as_group(self.runtime.outbounds.get(name))
        if group is None or group.kind != "selector":
            return message(400, "Must be a Selector")
        try:
            group.select(member)
        except ValueError as exc:
            return message(400, f"Selector update error: {exc}")
        log.info("selector %r now uses %r (controller API)", name, member)
        return NO_CONTENT

    async def _delay(self, request: Request, name: str) -> Reply:
        timeout = _timeout_ms(request)
        outbound = self.runtime.outbounds.get(name)
        if timeout is None or outbound is None:
            return BAD_REQUEST if outbound is not None else NOT_FOUND
        if self.prober is None:
            return message(503, "delay tests are not available in this build")
        url = request.query.get("url") or str(getattr(outbound, "url", DEFAULT_PROBE_URL))
        book = health_of(self.runtime)
        delay = 0
        try:
            with trio.fail_after(timeout / 1000):
                delay = await self.prober(outbound, url, timeout / 1000)
        except (trio.TooSlowError, TimeoutError):
            return message(504, "Timeout")
        except OSError as exc:
            return message(503, f"An error occurred in the delay test: {exc}")
        finally:
            if book is not None:
                book.record(name, delay)
        return json_reply({"delay": delay})

    async def _group(self, request: Request, seg: list[str]) -> Reply:
        rt = self.runtime
        if not seg:  # every group, as /proxies shows them
            tags = [tag for tag, ob in rt.outbounds.items() if as_group(ob) is not None]
            return json_reply({"proxies": [shapes.proxy(rt, tag) for tag in tags]})
        group = as_group(rt.outbounds.get(seg[0]))
        if group is None or len(seg) > 2 or (len(seg) == 2 and seg[1] != "delay"):
            return NOT_FOUND
        if len(seg) == 1:
            return json_reply(shapes.proxy(self.runtime, seg[0]))
        timeout = _timeout_ms(request)
        if timeout is None:
            return BAD_REQUEST
        try:
            with trio.fail_after(timeout / 1000):
                return json_reply(await group.probe_all())
        except (trio.TooSlowError, TimeoutError):
            return message(504, "Timeout")

    # -- /connections and the streams -----------------------------------------------------

    def _connections(self, request: Request, seg: list[str]) -> Reply | Feed:
        tracker = self.runtime.tracker
        if request.method == "DELETE" and not seg:
            closed = tracker.close_all()
            log.info("%d connection(s) closed by the controller API", closed)
            return NO_CONTENT
        if request.method == "DELETE" and len(seg) == 1:
            tracker.close(seg[0])
            return NO_CONTENT
        if request.method != "GET" or seg:
            return NOT_FOUND
        if not request.wants_websocket:
            return json_reply(shapes.connections(self.runtime))
        interval = _int(request.query.get("interval", "1000"))
        if interval is None or interval <= 0:
            return BAD_REQUEST
        return connections_feed(lambda: self.runtime, interval / 1000)

    def _stream(self, request: Request, name: str) -> Reply | Feed:
        if name == "traffic":
            return traffic_feed(lambda: self.runtime.tracker)
        if name == "memory":
            return memory_feed()
        level = request.query.get("level") or "info"
        if level not in LOG_LEVELS or self.logs is None:
            return BAD_REQUEST
        return logs_feed(self.logs, LOG_LEVELS[level])


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        parsed = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None
    return parsed if isinstance(parsed, dict) else None


def _int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def _timeout_ms(request: Request) -> int | None:
    """mihomo's ``timeout`` query: milliseconds, required, positive."""
    value = _int(request.query.get("timeout", ""))
    return value if value is not None and 0 < value <= 60_000 else None
