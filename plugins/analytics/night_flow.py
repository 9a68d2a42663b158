"""Per-group settings of the night-flow analysis: from the configuration and the API.

A group's settings are its preset with, on top, the configuration's values for
every group, its own configured values and the values an operator set through
the API (``PUT /api/v1/analytics/night-flow/{group}``), which win. The latter
are kept in the plugin's own table (``analytics_night_flow``, owner
``analytics``, ``migrations/sqlite/``) and held in memory, so the detector
(running in a worker thread) reads them without touching the database.
"""

from __future__ import annotations

import json as _json
import time
from typing import TYPE_CHECKING, Any

import msgspec
from sanic.request import Request

from balans_edge.core.analytics.night_flow_settings import (
    PRESETS,
    SETTING_NAMES,
    GroupNightFlow,
    NightFlowSettings,
    settings_for,
)
from balans_edge.core.storage.migrations import MigrationSet
from balans_edge.http_schema import free_form
from balans_edge.routes import ApiError, Param, Route, json

if TYPE_CHECKING:
    from balans_edge.core.context import PluginContext
    from balans_edge.core.model import Group
    from balans_edge.core.storage.gateway import SqlGateway

OWNER = "analytics"
MIGRATIONS = MigrationSet(OWNER, "balans_edge.plugins.analytics")
PATH = "/api/v1/analytics/night-flow/<group_id>"

SQL: dict[str, dict[str, str]] = {
    "sqlite": {
        "all": "SELECT group_id, settings FROM analytics_night_flow",
        "put": "INSERT INTO analytics_night_flow (group_id, settings, updated_at, updated_by) VALUES (?, ?, ?, ?) "
               "ON CONFLICT (group_id) DO UPDATE SET settings = excluded.settings, "
               "updated_at = excluded.updated_at, updated_by = excluded.updated_by",
        "delete": "DELETE FROM analytics_night_flow WHERE group_id = ?",
    },
}


class NightFlowSource:
    """Each group's night-flow settings: configuration and API-set values, in memory."""

    def __init__(self, config: Any, database: SqlGateway | None = None) -> None:
        self.config = config
        self.database = database
        self.stored: dict[str, dict[str, Any]] = {}
        """group id -> the values set through the API (``preset`` among them)."""
        self.loaded = False

    @property
    def sql(self) -> dict[str, str]:
        if self.database is None:
            raise RuntimeError("the night-flow settings have no database")
        if self.database.dialect not in SQL:
            raise RuntimeError(f"the analytics plugin has no SQL for the {self.database.dialect} dialect")
        return SQL[self.database.dialect]

    async def load(self) -> None:
        """Read the API-set values (once; later changes come through ``put`` and ``delete``)."""
        if self.loaded or self.database is None:
            return
        rows = await self.database.sql_read(self.sql["all"])
        self.stored = {r["group_id"]: _json.loads(r["settings"]) for r in rows}
        self.loaded = True

    def settings(self, group: Group, metered_members: bool) -> NightFlowSettings:
        return self.resolved(group.group_id, group.level, metered_members)[1]

    def resolved(self, group_id: str, level: str, metered_members: bool,
                 stored: dict[str, Any] | None = None) -> tuple[str, NightFlowSettings]:
        return settings_for(self.config, group_id, level, metered_members,
                            self.stored.get(group_id) if stored is None else stored)

    async def put(self, group_id: str, values: dict[str, Any], by: str) -> None:
        await self.load()
        await self.database.sql_write([(self.sql["put"], [(group_id, _json.dumps(values, sort_keys=True),
                                                            int(time.time()), by)])])
        self.stored[group_id] = values

    async def delete(self, group_id: str) -> None:
        await self.load()
        await self.database.sql_write([(self.sql["delete"], [(group_id,)])])
        self.stored.pop(group_id, None)


class NightFlowAnswer(msgspec.Struct):
    """A group's night-flow settings: its preset, the values in force, those set through the API."""

    group: str
    preset: str
    settings: NightFlowSettings
    set_by_api: dict[str, Any]
    presets: dict[str, dict[str, Any]]


def _body_schema() -> dict[str, Any]:
    schema = msgspec.json.schema(GroupNightFlow)
    definition = next(iter(schema.get("$defs", {}).values()), schema)
    properties = {k: v for k, v in definition.get("properties", {}).items() if k != "group"}
    return {"properties": properties, "additionalProperties": False}


NightFlowBody = free_form("NightFlowBody", "A group's night-flow preset and the values that differ from it "
                          "(each optional; null or left out: from the preset and the configuration)", _body_schema())


def _checked(values: dict[str, Any]) -> dict[str, Any]:
    """The body's values, checked by the settings' own types; 422 naming the key."""
    unknown = sorted(set(values) - {"preset", *SETTING_NAMES})
    if unknown:
        raise ApiError(422, "invalid", f"unknown keys {unknown} (known: preset, {', '.join(SETTING_NAMES)})")
    try:
        entry = msgspec.convert({"group": "-", **values}, GroupNightFlow)
    except msgspec.ValidationError as exc:
        raise ApiError(422, "invalid", str(exc)) from None
    return {k: getattr(entry, k) for k in ("preset", *SETTING_NAMES) if getattr(entry, k) is not None}


def routes(context: PluginContext, source: NightFlowSource) -> list[Route]:
    registry = context.registry

    async def group_of(group_id: str) -> Any:
        group = await registry.registry_get("groups", group_id)
        if group is None:
            raise ApiError(404, "not_found", f"group {group_id!r} is not in the registry")
        return group

    async def metered(group_id: str) -> bool:
        members = [m for m in await registry.registry_list("meters") if m.group_id == group_id]
        children = [g for g in await registry.registry_list("groups") if g.parent_id == group_id]
        return bool(members or children)

    async def answer(group: Any, stored: dict[str, Any] | None = None) -> dict[str, Any]:
        await source.load()
        stored = source.stored.get(group.group_id, {}) if stored is None else stored
        preset, settings = source.resolved(group.group_id, group.level, await metered(group.group_id), stored)
        return {"group": group.group_id, "preset": preset, "settings": settings.to_json(), "set_by_api": stored,
                "presets": PRESETS}

    async def get(request: Request, group_id: str) -> Any:
        return json(await answer(await group_of(group_id)))

    async def put(request: Request, group_id: str, body: Any) -> Any:
        group = await group_of(group_id)
        values = _checked(dict(body))
        try:
            await answer(group, values)  # every layer together must make valid settings
        except ValueError as exc:
            raise ApiError(422, "invalid", str(exc)) from None
        await source.put(group_id, values, str(request.ctx.user or ""))
        return json(await answer(group))

    async def delete(request: Request, group_id: str) -> Any:
        group = await group_of(group_id)
        await source.delete(group_id)
        return json(await answer(group))

    tags = ("analytics",)
    param = (Param("group_id", description="a balance group's id"),)
    return [
        Route("GET", PATH, get, "A group's night-flow settings: its preset, the values in force (preset, "
              "configuration and those set through the API) and the presets", params=param, tags=tags,
              response=NightFlowAnswer, responses={200: "OK", 404: "no such group"}),
        Route("PUT", PATH, put, "Set a group's night-flow preset and values (replacing those set before through "
              "the API); answers the values in force", role="operator", params=param, body=NightFlowBody, tags=tags,
              response=NightFlowAnswer,
              responses={200: "the settings in force", 404: "no such group", 422: "invalid, names the key"}),
        Route("DELETE", PATH, delete, "Drop the night-flow values set through the API: the preset and the "
              "configuration apply again", role="operator", params=param, tags=tags, response=NightFlowAnswer,
              responses={200: "the settings in force", 404: "no such group"}),
    ]
