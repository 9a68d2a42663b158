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
import socket
from typing import TYPE_CHECKING, Any

from sanic import Sanic
from sanic.exceptions import SanicException
from sanic.request import Request

from balans_edge.core.log_limit import LimitedLog
from balans_edge.core.roles import allows
from balans_edge.core.tokens import token_digest
from balans_edge.http_schema import Codec, Refusal
from balans_edge.openapi import openapi
from balans_edge.routes import ApiError, Route, json

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
        self._document: dict[str, Any] | None = None
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
        codec = Codec(route.body, route.query, route.params)

        def decoded(request: Request, params: dict[str, str]) -> dict[str, Any]:
            """The handler's arguments: the path parameters (percent-decoded), the query
            and the body, each as its declared type; 400 naming what is wrong."""
            try:
                out = codec.decode_path(params)
                if route.query is not None:
                    out["query"] = codec.decode_query({k: v[0] for k, v in request.args.items() if v})
                if route.body is not None:
                    out["body"] = codec.decode_body(request.body)
            except Refusal as exc:
                raise ApiError(400, exc.code, exc.message) from None
            return out

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
                return await route.handler(request, **decoded(request, params))
            finally:
                self.in_flight -= 1
                if self.in_flight == 0:
                    self._idle.set()

        self.app.add_route(handler, route.path, methods=[route.method], name=route.name)

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
        if self._document is None:  # the routes are fixed once mounted
            self._document = openapi(self.routes)
        return json(self._document)

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
