"""The HTTP layer: Sanic embedded in the server's event loop.

Sanic runs inside our own loop (no worker processes): ``create_server`` with
``return_asyncio_server=True`` and its lifecycle calls, so storage, drivers
and the API share one process. Routes come from ``balans_edge.routes.Route``
objects; this module adds authentication (bearer tokens with roles), JSON
errors and the OpenAPI document, and tracks requests in flight so shutdown
waits for them.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import itertools
import logging
import re
import socket
from typing import TYPE_CHECKING, Any

from sanic import Sanic
from sanic.exceptions import SanicException
from sanic.request import Request

from balans_edge import __version__
from balans_edge.core.log_limit import LimitedLog
from balans_edge.core.roles import allows
from balans_edge.core.tokens import token_digest
from balans_edge.routes import ApiError, Route, json, path_value

if TYPE_CHECKING:
    from balans_edge.config import ApiSection

log = logging.getLogger(__name__)
_names = itertools.count()

REFUSALS_PER_MINUTE = 20
"""401 and 403 log lines a minute at most; the rest are counted in the next line."""
SANIC_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 408: "timeout", 413: "payload_too_large", 503: "unavailable"}


class Http:
    def __init__(self, routes: list[Route], api: ApiSection, host: str, port: int) -> None:
        self.routes = routes
        self.api = api
        self.host = host
        self.port = port
        self.in_flight = 0
        self.stopping = False
        self._idle = asyncio.Event()
        self._idle.set()
        self._server: Any = None
        self._digests = [(u.digest(), u.name, u.role) for u in api.users]
        self._refusals = LimitedLog(log, burst=REFUSALS_PER_MINUTE)
        Sanic.test_mode = True  # several apps per process (tests); no Sanic signal handlers
        self.app = Sanic(f"balans_edge_{next(_names)}", configure_logging=False)
        self.app.config.REQUEST_MAX_SIZE = api.max_body_bytes
        self.app.config.KEEP_ALIVE_TIMEOUT = 15
        self.app.config.REQUEST_TIMEOUT = 60
        self.app.config.RESPONSE_TIMEOUT = 120
        self.app.config.ACCESS_LOG = False
        self.app.error_handler.add(Exception, self._error)
        for route in routes:
            self._mount(route)
        self.app.add_route(self._openapi, "/api/v1/openapi.json", methods=["GET"], name="openapi")

    # authentication ---------------------------------------------------------

    def user(self, request: Request) -> tuple[str, str] | None:
        """(name, role) of the caller, or None."""
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        presented = token_digest(token.strip())
        found = None
        for digest, name, role in self._digests:
            # Digests (plain and hashed tokens alike), compared with every user in
            # constant time, so timing reveals neither a token nor which user matched.
            if hmac.compare_digest(digest, presented):
                found = (name, role)
        return found

    def _refused(self, request: Request, route: Route, status: int, why: str) -> None:
        """Every 401 and 403 is logged with the peer and the route (not the raw path,
        which the caller chose), at most ``burst`` lines a minute."""
        self._refusals.log(logging.WARNING, "HTTP %d %s %s from %s: %s", status, route.method, route.openapi_path,
                           request.ip or "?", why)

    def _authorize(self, request: Request, route: Route) -> None:
        user = self.user(request)
        if user is None and self.api.anonymous_role == "viewer":
            user = ("anonymous", "viewer")
        # Open routes see the caller too (None: nobody): health shows more to a viewer.
        request.ctx.user, request.ctx.role = user or (None, None)
        if route.role is None:
            return
        if user is None:
            given = "authorization" in request.headers
            self._refused(request, route, 401, "invalid bearer token" if given else "no bearer token")
            raise ApiError(401, "unauthorized", "missing or invalid bearer token")
        if not allows(user[1], route.role):
            self._refused(request, route, 403, f'user "{user[0]}" ({user[1]}) needs role {route.role}')
            raise ApiError(403, "forbidden", f"{route.method} {route.openapi_path} needs role {route.role}")

    def _mount(self, route: Route) -> None:
        @functools.wraps(route.handler)
        async def handler(request: Request, **params: Any) -> Any:
            if self.stopping:
                # Keep-alive connections outlive the listener: refuse new work so
                # shutdown does not wait for clients that keep sending.
                raise ApiError(503, "unavailable", "server is shutting down; send again later")
            self.in_flight += 1
            self._idle.clear()
            try:
                self._authorize(request, route)
                decoded = {name: path_value(raw, name) for name, raw in params.items()}
                return await route.handler(request, **decoded)
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self._idle.set()

        name = re.sub(r"\W+", "_", f"{route.method.lower()}_{route.openapi_path.strip('/')}")
        self.app.add_route(handler, route.path, methods=[route.method], name=name)

    # errors -----------------------------------------------------------------

    async def _error(self, request: Request, exc: Exception) -> Any:
        if isinstance(exc, ApiError):
            return json({"error": {"code": exc.code, "message": exc.message}}, status=exc.status)
        if isinstance(exc, SanicException):
            status = getattr(exc, "status_code", 500) or 500
            code = SANIC_CODES.get(status, "error")
            message = str(exc) if status < 500 else "internal error"
            return json({"error": {"code": code, "message": message}}, status=status)
        log.exception("unhandled error in %s %s", request.method, request.path)
        return json({"error": {"code": "internal", "message": "internal error; see the server log"}}, status=500)

    # OpenAPI ----------------------------------------------------------------

    async def _openapi(self, request: Request) -> Any:
        return json(openapi(self.routes))

    # lifecycle --------------------------------------------------------------

    async def start(self) -> None:
        # Sanic reads port 0 as "its default, 8000": bind a free port here instead.
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, 0), family=family) if self.port == 0 else None
        self._server = await self.app.create_server(
            host=self.host, port=self.port, sock=sock, return_asyncio_server=True, access_log=False
        )
        if self._server is None:
            raise OSError(f"cannot listen on {self.host}:{self.port}")
        await self._server.startup()
        await self._server.before_start()
        await self._server.after_start()
        sockets = self._server.server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("HTTP API on http://%s:%s/api/v1", self.host, self.port)

    async def stop(self, grace_s: float) -> None:
        if self._server is None:
            return
        self.stopping = True
        await self._server.before_stop()
        self._server.server.close()  # stop accepting; let requests in flight finish
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            log.warning("%d HTTP requests still running after %.0fs; closing", self.in_flight, grace_s)
        self._server.close()
        await self._server.wait_closed()
        await self._server.after_stop()
        self._server = None


def openapi(routes: list[Route]) -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for r in routes:
        op: dict[str, Any] = {"summary": r.summary, "operationId": r.handler.__name__, "tags": list(r.tags)}
        params = []
        for p in r.params:
            schema: dict[str, Any] = {"type": p.type}
            if p.enum:
                schema["enum"] = list(p.enum)
            if p.format:
                schema["format"] = p.format
            params.append({"name": p.name, "in": p.where, "required": p.required or p.where == "path",
                           "description": p.description, "schema": schema})
        if params:
            op["parameters"] = params
        if r.body:
            op["requestBody"] = {"required": True, "description": r.body,
                                 "content": {"application/json": {"schema": {"type": "object"}}}}
        responses = {str(k): {"description": v} for k, v in (r.responses or {200: "OK"}).items()}
        if r.role is not None:
            op["security"] = [{"bearer": []}]
            op["x-role"] = r.role
            responses.setdefault("401", {"description": "missing or invalid token"})
            responses.setdefault("403", {"description": f"needs role {r.role}"})
        op["responses"] = responses
        paths.setdefault(r.openapi_path, {})[r.method.lower()] = op
    return {
        "openapi": "3.0.3",
        "info": {"title": "balans-edge API", "version": __version__,
                 "description": 'Errors are JSON: {"error": {"code": "...", "message": "..."}}.'},
        "servers": [{"url": "/"}],
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }
