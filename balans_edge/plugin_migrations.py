"""The migrations plugins contribute (``register_migrations``), collected for
whatever opens storage: the server at start-up and every command that opens the
database, so a plugin's tables are current whichever runs first.

A plugin whose hook raises or returns something that is not a list of
``MigrationSet`` is disabled like a plugin whose other hooks fail (start-up
stops if it is required); the rest keep their tables. A plugin disabled in
the configuration contributes none: its tables stay as they are until it is
enabled again.

Plugins that share tables (the Modbus and OPC UA tag polling, owner ``tags``)
each contribute the one set of those tables (same owner, package and folder):
it is applied once, with the first plugin that gives it, whichever of them
runs. A different set for an owner another plugin has is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from balans_edge.core.storage.migrations import CORE, MigrationError, MigrationSet
from balans_edge.plugin_manager import Plugins

HOOK = "register_migrations"


def plugin_migrations(plugins: Plugins, flags: Mapping[str, Any] | None = None) -> list[MigrationSet]:
    """Every enabled plugin's migration sets, in plugin order; a plugin that
    fails here is disabled (PluginError if ``flags`` say it is required)."""
    return [s for _, s in owned_migrations(plugins, flags)]


def owned_migrations(plugins: Plugins, flags: Mapping[str, Any] | None = None) -> list[tuple[str, MigrationSet]]:
    """``plugin_migrations`` with the name of the plugin each set is of: (plugin, set)."""
    flags = flags or {}

    def required(name: str) -> bool:
        return bool(getattr(flags.get(name), "required", False))

    for name, flag in flags.items():
        if not getattr(flag, "enabled", True) and name in plugins.info:
            plugins.disable(name)
    if HOOK not in plugins.hook_names():
        return []

    results, errors = plugins.call(HOOK)
    for error in errors:
        plugins.fail(error.plugin, error.original, required(error.plugin))
    out: list[tuple[str, MigrationSet]] = []
    owners: dict[str, tuple[str, MigrationSet]] = {}
    # pluggy calls the last registered first: reversed, in plugin order.
    for name, sets in reversed(results):
        try:
            sets = _checked(sets, name, owners)
        except MigrationError as exc:
            plugins.fail(name, exc, required(name))
            continue
        sets = [s for s in sets if s.owner not in owners]  # shared sets: applied with the first plugin
        for s in sets:
            owners[s.owner] = (name, s)
        out += [(name, s) for s in sets]
    return out


def _checked(sets: Any, plugin: str, owners: Mapping[str, tuple[str, MigrationSet]]) -> list[MigrationSet]:
    """A plugin's sets, or MigrationError saying what is wrong with them."""
    sets = list(sets or [])
    for s in sets:
        if not isinstance(s, MigrationSet):
            raise MigrationError(f"{HOOK} returned {type(s).__name__}, not a MigrationSet")
        if s.owner == CORE:
            raise MigrationError(f"migration owner {CORE!r} is reserved for core's tables")
        if s.owner in owners and owners[s.owner][1] != s:
            other, theirs = owners[s.owner]
            raise MigrationError(f"migration owner {s.owner!r} is already plugin {other}'s "
                                 f"({theirs.package}/{theirs.folder}, not {s.package}/{s.folder})")
    if len({s.owner for s in sets}) != len(sets):
        raise MigrationError("two migration sets of one owner: an owner has one sequence")
    return sets
