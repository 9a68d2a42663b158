"""Finding, loading and calling plugins (pluggy).

Built-in plugins are registered from ``DEFAULT_PLUGINS`` exactly like third-
party ones, which come from the ``balans_edge`` entry-point group. A plugin
that fails to import, to register or to start is recorded with a short
traceback summary and disabled; the rest keeps running. Hooks are called one
implementation at a time so that a failure is attributed to its plugin.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import logging
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pluggy

from balans_edge import hookspecs
from balans_edge.core.redact import redact_text

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "balans_edge"
DEFAULT_PLUGINS: dict[str, str] = {
    "dmesh": "balans_edge.plugins.dmesh.plugin",
    "analytics": "balans_edge.plugins.analytics.plugin",
    "modbus": "balans_edge.plugins.modbus.plugin",
    "opcua": "balans_edge.plugins.opcua.plugin",
    "export": "balans_edge.plugins.export.plugin",
}
"""Built-in plugins by name."""


def summarize(exc: BaseException) -> str:
    """``ValueError: boom (at plugin.py:12 in start)``: enough to find the fault."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" (at {last.filename.rsplit('/', 1)[-1]}:{last.lineno} in {last.name})"
    # A plugin's error may quote its configuration (a URL with a password): masked.
    return redact_text(f"{type(exc).__name__}: {exc}{where}")


@dataclass
class PluginInfo:
    name: str
    module: str
    source: str
    """builtin | entry point (distribution and version)"""
    state: str = "loaded"
    """loaded | started | disabled | failed"""
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    errors: int = 0
    """Exceptions raised by its observer hooks since start."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "module": self.module,
            "source": self.source,
            "state": self.state,
            "error": self.error,
            "hooks": self.hooks,
            "errors": self.errors,
        }


class PluginError(Exception):
    """A required plugin could not be loaded or started."""


class Plugins:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("balans_edge")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}

    # loading ----------------------------------------------------------------

    def load(self, *, builtins: bool = True, entry_points: bool = True, modules: Iterable[str] = ()) -> None:
        if builtins:
            for name, module in DEFAULT_PLUGINS.items():
                self._import(name, module, "builtin")
        if entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                dist = f"{ep.dist.name} {ep.dist.version}" if ep.dist else "unknown distribution"
                self._load_entry_point(ep, f"entry point ({dist})")
        for module in modules:
            self._import(module.rsplit(".", 1)[-1], module, "module")

    def _import(self, name: str, module: str, source: str) -> None:
        try:
            obj = importlib.import_module(module)
        except Exception as exc:
            self._record_failure(name, module, source, exc)
            return
        self.register(obj, name, source)

    def _load_entry_point(self, ep: importlib.metadata.EntryPoint, source: str) -> None:
        try:
            obj = ep.load()
        except Exception as exc:
            self._record_failure(ep.name, ep.value, source, exc)
            return
        self.register(obj, ep.name, source)

    def _record_failure(self, name: str, module: str, source: str, exc: BaseException) -> None:
        log.error("plugin %s failed to load: %s", name, summarize(exc))
        self.info[name] = PluginInfo(name, module, source, state="failed", error=summarize(exc))

    def register(self, obj: ModuleType | object, name: str, source: str = "module") -> None:
        module = getattr(obj, "__name__", type(obj).__name__)
        if name in self.info and self.info[name].state != "failed":
            log.warning("plugin %s is already registered; %s ignored", name, module)
            return
        try:
            self.pm.register(obj, name=name)
        except Exception as exc:
            self._record_failure(name, module, source, exc)
            return
        callers = self.pm.get_hookcallers(obj) or []
        unknown = sorted(h.name for h in callers if not h.has_spec())
        if unknown:
            # A misspelt hook would otherwise never be called and never reported.
            self.pm.unregister(obj, name=name)
            self._record_failure(name, module, source, LookupError(f"unknown hook(s): {', '.join(unknown)}"))
            return
        self.info[name] = PluginInfo(name, module, source, hooks=sorted(h.name for h in callers))

    def disable(self, name: str, state: str = "disabled", error: str | None = None) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin, name=name)
        if name in self.info:
            self.info[name].state = state
            self.info[name].error = error

    def fail(self, name: str, exc: BaseException, required: bool) -> None:
        """Disable a plugin that raised; raise PluginError if it was required."""
        error = summarize(exc)
        log.error("plugin %s failed: %s", name, error)
        self.disable(name, "failed", error)
        if required:
            raise PluginError(f"required plugin {name} failed: {error}") from exc

    # calling ------------------------------------------------------------------

    def hook_names(self) -> list[str]:
        return sorted(n for n in dir(self.pm.hook) if not n.startswith("_"))

    def _in_order(self, hook: str) -> list[pluggy.HookImpl]:
        """Implementations in registration order, built-in plugins first.

        pluggy keeps them in this order and calls them last-registered first;
        components must start (and contributions be collected) as registered."""
        return getattr(self.pm.hook, hook).get_hookimpls()

    def call_each(
        self, hook: str, on_error: Callable[[PluginCallError], None] | None = None, **kwargs: Any
    ) -> list[tuple[str, Any]]:
        """Call every implementation of ``hook`` once; return (plugin name, result).

        An exception is raised with the plugin's name attached (``PluginCallError``)
        so the caller decides between disabling the plugin and aborting; with
        ``on_error`` it is passed there instead and the other plugins are still called."""
        results = []
        for impl in self._in_order(hook):
            args = {a: kwargs[a] for a in impl.argnames}
            try:
                results.append((impl.plugin_name, impl.function(**args)))
            except Exception as exc:
                error = PluginCallError(impl.plugin_name, hook, exc)
                if on_error is None:
                    raise error from exc
                on_error(error)
        return results

    async def notify(self, hook: str, **kwargs: Any) -> None:
        """Call an observer hook; failures are logged and counted, never raised."""
        for impl in self._in_order(hook):
            try:
                result = impl.function(**{a: kwargs[a] for a in impl.argnames})
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                log.warning("plugin %s: %s raised %s", impl.plugin_name, hook, summarize(exc))
                if impl.plugin_name in self.info:
                    self.info[impl.plugin_name].errors += 1

    def listing(self) -> list[dict[str, Any]]:
        return [self.info[n].as_dict() for n in sorted(self.info)]


class PluginCallError(Exception):
    def __init__(self, plugin: str, hook: str, exc: BaseException) -> None:
        super().__init__(f"plugin {plugin}: {hook} raised {summarize(exc)}")
        self.plugin = plugin
        self.hook = hook
        self.original = exc


def load_plugins(modules: Iterable[str] = ()) -> Plugins:
    plugins = Plugins()
    plugins.load(modules=modules)
    return plugins


def config_schemas(plugins: Plugins) -> dict[str, type]:
    """Schemas of every plugin's configuration tables; a broken hook fails its plugin."""
    schemas: dict[str, type] = {}
    for impl in plugins.pm.hook.config_schema.get_hookimpls():
        try:
            schemas.update(impl.function() or {})
        except Exception as exc:
            plugins.fail(impl.plugin_name, exc, required=False)
    return schemas
