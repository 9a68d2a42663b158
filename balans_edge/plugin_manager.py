"""Finding, loading and calling plugins (pluggy).

Built-in plugins are registered from ``DEFAULT_PLUGINS`` exactly like third-
party ones, which come from the ``balans_edge`` entry-point group. A plugin
is a class (instantiated here without arguments) or a module. A plugin that
fails to import, to register or to start is recorded with a short traceback
summary and disabled; the rest keeps running.

Hooks are called by pluggy itself (its order, ``tryfirst``/``trylast``,
wrappers and ``firstresult``). Fault isolation per plugin comes from a guard
put around each plain implementation when its plugin registers: an exception
is recorded against that plugin and the implementation answers None, so the
call goes on with the other plugins. The guard also notes which plugin
returned what, so contributions stay attributed to their plugin.
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
    "dmesh": "balans_edge.plugins.dmesh.plugin:DmeshPlugin",
    "analytics": "balans_edge.plugins.analytics.plugin:AnalyticsPlugin",
    "modbus": "balans_edge.plugins.modbus.plugin:ModbusPlugin",
    "opcua": "balans_edge.plugins.opcua.plugin:OpcuaPlugin",
    "export": "balans_edge.plugins.export.plugin:ExportPlugin",
}
"""Built-in plugins by name: ``module:Class`` as an entry point names them."""


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
        self._results: list[tuple[str, Any]] = []
        self._subsets: dict[tuple[str, str], Any] = {}
        self._errors: list[PluginCallError] | None = None
        """While ``call`` runs: what each implementation answered and which raised
        (outside it, observers' failures are logged and counted)."""

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

    def _import(self, name: str, spec: str, source: str) -> None:
        try:
            module, _, attr = spec.partition(":")
            obj = importlib.import_module(module)
            obj = _instance(getattr(obj, attr) if attr else obj)
        except Exception as exc:
            self._record_failure(name, spec, source, exc)
            return
        self.register(obj, name, source)

    def _load_entry_point(self, ep: importlib.metadata.EntryPoint, source: str) -> None:
        try:
            obj = _instance(ep.load())
        except Exception as exc:
            self._record_failure(ep.name, ep.value, source, exc)
            return
        self.register(obj, ep.name, source)

    def _record_failure(self, name: str, module: str, source: str, exc: BaseException) -> None:
        log.error("plugin %s failed to load: %s", name, summarize(exc))
        self.info[name] = PluginInfo(name, module, source, state="failed", error=summarize(exc))

    def register(self, obj: ModuleType | object, name: str, source: str = "module") -> None:
        module = getattr(obj, "__name__", None) or f"{type(obj).__module__}:{type(obj).__qualname__}"
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
        for caller in callers:
            for impl in caller.get_hookimpls():
                if impl.plugin is obj and not (impl.hookwrapper or impl.wrapper):
                    impl.function = self._guard(name, caller.name, impl.function)
        self.info[name] = PluginInfo(name, module, source, hooks=sorted(h.name for h in callers))

    def _guard(self, plugin: str, hook: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` that records its result and its failure against ``plugin``.

        A coroutine is wrapped too, so that an exception raised while it is
        awaited is also caught and counted (observers may be coroutines)."""

        def guarded(*args: Any, **kwargs: Any) -> Any:
            try:
                result = function(*args, **kwargs)
            except Exception as exc:
                self._failed(plugin, hook, exc)
                return None
            if inspect.isawaitable(result):
                return _Awaited(result, lambda exc: self._failed(plugin, hook, exc))
            if self._errors is not None:
                self._results.append((plugin, result))
            return result

        guarded.__wrapped__ = function  # type: ignore[attr-defined]
        return guarded

    def _failed(self, plugin: str, hook: str, exc: Exception) -> None:
        if self._errors is not None:
            self._errors.append(PluginCallError(plugin, hook, exc))
            return
        log.warning("plugin %s: %s raised %s", plugin, hook, summarize(exc))
        if plugin in self.info:
            self.info[plugin].errors += 1

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

    def call(self, hook: str, **kwargs: Any) -> tuple[list[tuple[str, Any]], list[PluginCallError]]:
        """Call a hook through pluggy; return (plugin name, result) of each plain
        implementation in the order pluggy called them, and the errors of the
        implementations that raised (they answered None)."""
        self._results, self._errors = [], []
        try:
            getattr(self.pm.hook, hook)(**kwargs)
            return self._results, self._errors
        finally:
            self._results, self._errors = [], None

    async def notify(self, hook: str, *, only: str | None = None, **kwargs: Any) -> None:
        """Call an observer hook (of every plugin, or ``only`` that one's); failures are
        logged and counted, never raised. Coroutine results are awaited in the order
        pluggy called them."""
        caller = getattr(self.pm.hook, hook) if only is None else self._only(only, hook)
        waiting = [r for r in caller(**kwargs) if inspect.isawaitable(r)]
        try:
            while waiting:
                await waiting.pop(0)
        finally:
            for rest in waiting:  # cancelled midway: the others are dropped, not left unawaited
                rest.close()

    def implementers(self, hook: str) -> list[str]:
        """Plugins with a plain implementation of ``hook``, in registration order."""
        return [i.plugin_name for i in getattr(self.pm.hook, hook).get_hookimpls() if not (i.hookwrapper or i.wrapper)]

    def _only(self, plugin: str, hook: str) -> Any:
        """The hook of one plugin (pluggy's subset caller), kept: observers call it per event."""
        key = (plugin, hook)
        if key not in self._subsets:
            others = [p for name, p in self.pm.list_name_plugin() if name != plugin]
            self._subsets[key] = self.pm.subset_hook_caller(hook, remove_plugins=others)
        return self._subsets[key]

    def listing(self) -> list[dict[str, Any]]:
        return [self.info[n].as_dict() for n in sorted(self.info)]


class _Awaited:
    """An implementation's coroutine whose exception is recorded against its plugin
    when awaited; ``close`` closes the coroutine itself (a notify cut short)."""

    def __init__(self, awaitable: Any, failed: Callable[[Exception], None]) -> None:
        self._awaitable = awaitable
        self._failed = failed

    def __await__(self) -> Any:
        try:
            return (yield from self._awaitable.__await__())
        except Exception as exc:
            self._failed(exc)
            return None

    def close(self) -> None:
        close = getattr(self._awaitable, "close", None)
        if close is not None:
            close()


class PluginCallError(Exception):
    def __init__(self, plugin: str, hook: str, exc: BaseException) -> None:
        super().__init__(f"plugin {plugin}: {hook} raised {summarize(exc)}")
        self.plugin = plugin
        self.hook = hook
        self.original = exc


def _instance(obj: Any) -> Any:
    """A plugin class is instantiated (each server gets its own plugin objects);
    a module or an object is registered as it is."""
    return obj() if inspect.isclass(obj) else obj


def load_plugins(modules: Iterable[str] = ()) -> Plugins:
    plugins = Plugins()
    plugins.load(modules=modules)
    return plugins


def config_schemas(plugins: Plugins) -> dict[str, type]:
    """Schemas of every plugin's configuration tables; a broken hook fails its plugin."""
    schemas: dict[str, type] = {}
    results, errors = plugins.call("config_schema")
    for _, result in results:
        schemas.update(result or {})
    for error in errors:
        plugins.fail(error.plugin, error.original, required=False)
    return schemas
