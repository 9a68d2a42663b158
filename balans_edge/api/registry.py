"""Registry CRUD: concentrators, radio modules, accounts, meters and balance groups."""

from __future__ import annotations

import time
import unicodedata
from typing import TYPE_CHECKING, Any

import msgspec
from sanic.request import Request

from balans_edge.core import registry as reg
from balans_edge.core import registry_history as history
from balans_edge.core.balance_queries import Tree
from balans_edge.core.registry_rows import ROWS
from balans_edge.core.storage import StorageError
from balans_edge.http_schema import FreeForm, free_form
from balans_edge.routes import ApiError, Param, Route, json

if TYPE_CHECKING:
    from balans_edge.server import Server

KINDS = {
    "concentrators": ("concentrator_id", "integer"),
    "modules": ("module_id", "integer"),
    "accounts": ("account_id", "string"),
    "meters": ("meter_id", "string"),
    "groups": ("group_id", "string"),
}


def routes(server: Server) -> list[Route]:
    out: list[Route] = []
    for kind, (key, key_type) in KINDS.items():
        out.extend(_kind_routes(server, kind, key, key_type))
    return out


def row_type(kind: str) -> type[FreeForm]:
    """The body of a create or replace: one object of ``kind``, its columns as in
    docs/registry.md. The registry checks the values and reports every problem at once
    (422 naming each column), as it does for files."""
    columns = reg.COLUMNS[kind]
    # Each column's meaning (as docs/registry.md says it), without types: the registry, not the
    # schema, judges the values (lax about numbers written as text, every problem named at once).
    said = msgspec.json.schema(ROWS[kind])["$defs"][ROWS[kind].__name__]["properties"]
    properties: dict[str, Any] = {name: {k: v for k, v in said.get(name, {}).items() if k == "description"}
                                  for name in columns}
    if kind == "meters":
        properties[reg.EFFECTIVE_FROM] = {"type": "string", "description": "ISO-8601 with a timezone: when changed "
                                                                           "parameters take effect, default now"}
    return free_form(f"{kind[:-1].title()}Row", f"One of the {kind}: its columns as in docs/registry.md",
                     {"properties": properties, "required": [n for n, c in columns.items() if c.required]})


def _kind_routes(server: Server, kind: str, key: str, key_type: str) -> list[Route]:
    storage = server.storage

    async def list_all(request: Request) -> Any:
        return json({kind: [reg.format_object(o) for o in await storage.registry_list(kind)]})

    async def get_one(request: Request, ident: str | int) -> Any:
        obj = await storage.registry_get(kind, ident)
        if obj is None:
            raise ApiError(404, "not_found", f"{kind[:-1]} {ident!r} is not in the registry")
        out = reg.format_object(obj)
        if kind == "groups":  # a group's members live in the meters and groups that name it
            out |= (await Tree.current(storage)).describe(obj.group_id)
        return json(out)

    def parse(request: Request, data: Any, ident: str | int | None) -> tuple[Any, dict[str, int]]:
        """One object of the body, checked on its own, and when its changed parameters take
        effect (meters); the path's key wins over (and must match) the body's."""
        if not isinstance(data, dict):
            raise ApiError(400, "bad_body", f"expected a JSON object describing one {kind[:-1]}")
        where = f"{request.method} /api/v1/{kind}" + ("" if ident is None else f"/{ident}")
        if ident is not None:
            if key in data and unicodedata.normalize("NFC", str(data[key])) != str(ident):
                raise ApiError(400, "bad_body", f"{key} in the body ({data[key]!r}) differs from the path ({ident!r})")
            data = {**data, key: ident}
        effective: dict[str, int] = {}
        try:
            raw = data.get(reg.EFFECTIVE_FROM) if kind == "meters" else None
            if kind == "meters":
                data = {k: v for k, v in data.items() if k != reg.EFFECTIVE_FROM}
            obj = reg.parse_object(kind, data, where=where)
            if raw is not None:
                effective[obj.meter_id] = history.parse_effective(raw, reg.Where(where), int(time.time()))
            return obj, effective
        except reg.RegistryError as exc:
            raise ApiError(422, "invalid", str(exc)) from None

    async def save(request: Request, obj: Any, effective: dict[str, int]) -> None:
        """Check ``obj`` against the registry and write it."""
        where = f"{request.method} /api/v1/{kind}/{reg.key_of(obj)}"
        try:
            # A group's formula may name the tags the running clients read (core.calculated).
            await reg.validate_upsert(storage, obj, where=where, tags=server.tags.known() if kind == "groups" else None)
            if kind == "meters":
                old = await storage.registry_get(kind, obj.meter_id)
                changed = {obj.meter_id: old} if history.params_changed(old, obj) else {}
                problems = await history.effective_problems(storage, changed, effective,
                                                            {obj.meter_id: reg.Where(where)})
                if problems:
                    raise reg.RegistryError(problems)
        except reg.RegistryError as exc:
            raise ApiError(422, "invalid", str(exc)) from None
        try:
            await storage.registry_apply({kind: [obj]}, who=f"api:{request.ctx.user}", effective_from=effective)
        except StorageError as exc:
            raise ApiError(409, "conflict", f"{kind[:-1]} not saved: {exc}") from None

    async def create(request: Request, body: FreeForm) -> Any:
        obj, effective = parse(request, body, None)
        if await storage.registry_get(kind, reg.key_of(obj)) is not None:
            raise ApiError(409, "conflict", f"{kind[:-1]} {reg.key_of(obj)!r} already exists; use PUT to change it")
        await save(request, obj, effective)
        return json(reg.format_object(obj), status=201)

    async def put(request: Request, ident: str | int, body: FreeForm) -> Any:
        obj, effective = parse(request, body, ident)
        existed = await storage.registry_get(kind, reg.key_of(obj)) is not None
        await save(request, obj, effective)
        return json(reg.format_object(obj), status=200 if existed else 201)

    async def delete(request: Request, ident: str | int) -> Any:
        parsed = ident
        if await storage.registry_get(kind, parsed) is None:
            raise ApiError(404, "not_found", f"{kind[:-1]} {ident!r} is not in the registry")
        stored = {k: await storage.registry_list(k) for k in KINDS}
        problems = reg.check_delete(stored, kind, parsed, where=f"{request.method} /api/v1/{kind}/{parsed}")
        if problems:
            raise ApiError(409, "conflict", str(reg.RegistryError(problems)))
        if kind == "meters":
            key_of = (await storage.meter_keys()).get(str(parsed))
            if key_of is not None and await storage.has_readings(key_of):
                raise ApiError(409, "conflict", f"meter {ident!r} has readings; set removed_time instead of deleting")
        try:
            await storage.registry_apply({}, {kind: [parsed]}, who=f"api:{request.ctx.user}")
        except StorageError as exc:
            raise ApiError(409, "conflict", f"{kind[:-1]} {ident!r} is still referenced: {exc}") from None
        return json({"deleted": parsed})

    base = f"/api/v1/{kind}"
    item = f"{base}/<ident>"
    row = row_type(kind)
    listing = msgspec.defstruct(f"{kind.title()}Listing", [(kind, list[row])])  # type: ignore[valid-type]
    deleted = msgspec.defstruct(f"{kind[:-1].title()}Deleted", [("deleted", int if key_type == "integer" else str)])
    key_param = (Param("ident", type=key_type, description=f"the {kind[:-1]}'s {key}",  # type: ignore[arg-type]
                       label=key, **({"minimum": 1, "maximum": reg.U32_MAX} if key_type == "integer" else {})),)
    tags = ("registry",)
    list_all.__name__, get_one.__name__ = f"list_{kind}", f"get_{kind}"
    create.__name__, put.__name__, delete.__name__ = f"create_{kind}", f"put_{kind}", f"delete_{kind}"
    return [
        Route("GET", base, list_all, f"List {kind}", response=listing, tags=tags),
        Route("POST", base, create, f"Create one of the {kind} (409 if it exists)", role="admin", tags=tags,
              body=row, response=row, responses={201: "created", 409: "exists", 422: "invalid, names the field"}),
        Route("GET", item, get_one, f"One of the {kind}", params=key_param, response=row, tags=tags,
              responses={200: "OK", 404: "not in the registry"}),
        Route("PUT", item, put, f"Create or replace one of the {kind}", role="admin", params=key_param, tags=tags,
              body=row, response={200: row, 201: row},
              responses={200: "replaced", 201: "created", 422: "invalid, names the field"}),
        Route("DELETE", item, delete, f"Delete one of the {kind} (409 while referenced or with readings)",
              role="admin", params=key_param, response=deleted, tags=tags,
              responses={200: "deleted", 404: "not found", 409: "in use"}),
    ]
