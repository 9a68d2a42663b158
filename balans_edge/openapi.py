"""The OpenAPI 3.1 document of the routes, generated from their declarations.

Request bodies, query parameters and answers are the routes' msgspec types
(``balans_edge.http_schema``); their JSON Schemas (with ranges, choices and
descriptions) go under ``#/components/schemas``. Every refusal and failure has
the one error shape, documented for each status a route names and as the
``default`` answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from balans_edge import __version__
from balans_edge.http_schema import ErrorBody, components, optional, path_parameter, query_parameters
from balans_edge.routes import Route

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


def _declared(route: Route) -> dict[int, Any]:
    """Answer types by status: ``response`` may be one type (the first 2xx status) or one per status."""
    if route.response is None:
        return {}
    if isinstance(route.response, dict):
        return dict(route.response)
    ok = min((s for s in route.responses if 200 <= s < 300), default=200)
    return {ok: route.response}


def openapi(routes: Sequence[Route]) -> dict[str, Any]:
    types = [ErrorBody]
    for r in routes:
        types += [t for t in (r.query, optional(r.body)[0]) if t is not None] + list(_declared(r).values())
    refs, defs = components(types)
    paths: dict[str, Any] = {}
    names = Counter(r.handler.__name__ for r in routes)
    for r in routes:
        name = r.handler.__name__ if names[r.handler.__name__] == 1 else r.name
        op: dict[str, Any] = {"summary": r.summary, "operationId": name, "tags": list(r.tags)}
        params = [path_parameter(p) for p in r.params]
        if r.query is not None:
            params += query_parameters(refs[r.query], defs)
        if params:
            op["parameters"] = params
        if r.body is not None:
            body, may_be_left_out = optional(r.body)
            op["requestBody"] = {"required": not may_be_left_out,
                                 "content": {"application/json": {"schema": refs[body]}}}
        declared = _declared(r)
        responses: dict[str, Any] = {}
        for status, text in sorted((r.responses or {200: "OK"}).items()):
            answer: dict[str, Any] = {"description": text}
            if status in declared:
                answer["content"] = {r.content_type: {"schema": refs[declared[status]]}}
            elif status >= 400:
                answer["content"] = {"application/json": {"schema": ERROR_REF}}
            elif status < 300 and r.content_type != "application/json":
                answer["content"] = {r.content_type: {"schema": {"type": "string"}}}
            responses[str(status)] = answer
        for status in set(declared) - set(r.responses or {200: "OK"}):
            responses[str(status)] = {"description": "OK",
                                      "content": {r.content_type: {"schema": refs[declared[status]]}}}
        if r.query is not None or r.body is not None or r.params:
            responses.setdefault("400", {"description": "a parameter or the body is refused; the message names it",
                                         "content": {"application/json": {"schema": ERROR_REF}}})
        if r.role is not None:
            op["security"] = [{"bearer": []}]
            op["x-role"] = r.role
            for status, text in ((401, "missing or invalid token"), (403, f"needs role {r.role}")):
                responses.setdefault(str(status), {"description": text,
                                                   "content": {"application/json": {"schema": ERROR_REF}}})
        responses["default"] = {"description": "an error", "content": {"application/json": {"schema": ERROR_REF}}}
        op["responses"] = dict(sorted(responses.items()))
        paths.setdefault(r.openapi_path, {})[r.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "balans-edge API", "version": __version__,
                 "description": 'Errors are JSON: {"error": {"code": "...", "message": "..."}}; the message names '
                                "the parameter or the key path of the body that was refused."},
        "servers": [{"url": "/"}],
        "components": {"schemas": defs, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": paths,
    }
