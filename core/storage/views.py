"""Read-only views of the core repositories: what plugins and queries are given.

Every core repository is split into its reads (``RegistryReader``,
``ReadingReader``, ...) and its writes (the ``*Repository`` built on them).
A plugin gets views that hold only the reads: ``view_of`` builds one over a
backend, an object of the reader class whose methods forward to the backend;
the writes are not there at all, so a plugin cannot write core's tables by
mistake or on purpose. Everything a plugin changes goes through a service
that audits it (ingest, the command service, the journal, ``RegistryEditor``).
"""

from __future__ import annotations

from abc import ABC
from collections.abc import Mapping
from typing import Any, TypeVar

from balans_edge.core.storage.balances_repository import BalanceReader
from balans_edge.core.storage.commands_repository import CommandReader
from balans_edge.core.storage.findings_repository import FindingReader
from balans_edge.core.storage.intervals_repository import IntervalReader
from balans_edge.core.storage.quarantine_repository import QuarantineReader
from balans_edge.core.storage.readings_repository import ReadingReader
from balans_edge.core.storage.registry_repository import RegistryReader, RegistryRepository

__all__ = ["Queries", "RegistryEditor", "view_of"]


class Queries(RegistryReader, ReadingReader, QuarantineReader, IntervalReader, BalanceReader, FindingReader,
              CommandReader, ABC):
    """Every read of core's data: the registry, readings, quarantine, hourly
    consumption, balances, findings, alarms and the command audit. What core's
    query helpers (``core.balance_queries``, ``core.analytics``) take, since a
    query of derived data resolves meters and groups as well."""


R = TypeVar("R", bound=ABC)

_VIEW_CLASSES: dict[type, type] = {}


def _forward(name: str) -> Any:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._target, name)(*args, **kwargs)

    method.__name__ = name
    return method


def _attribute(name: str) -> property:
    return property(lambda self: getattr(self._target, name), doc=f"The backend's ``{name}``.")


def view_of(interface: type[R], target: R) -> R:
    """A view of ``target`` that is an ``interface`` and has only what it declares:
    its abstract methods, forwarded, and its annotated attributes, read-only.

    The view class is made from the interface, so a method added to a reader
    is in every view at once and a write (declared by the repository built on
    the reader) never is. Used for the readers here and for a plugin's
    ``SqlGateway``: the backend object behind them all holds far more."""
    cls = _VIEW_CLASSES.get(interface)
    if cls is None:
        body: dict[str, Any] = {name: _forward(name) for name in sorted(interface.__abstractmethods__)}
        for base in interface.__mro__:
            for name in vars(base).get("__annotations__", {}):
                body.setdefault(name, _attribute(name))
        body.update(__slots__=("_target",), __doc__=f"A view: what ``{interface.__name__}`` declares.")
        cls = _VIEW_CLASSES[interface] = type(f"{interface.__name__}View", (interface,), body)
    view = cls.__new__(cls)
    view._target = target
    return view


class RegistryEditor:
    """Registry edits made by a component (not by a user): a plugin that registers
    what it finds (totalisers of a PLC become meters, a demo site installs its
    registry). Every edit is audited in the name given here, like a user's."""

    def __init__(self, repository: RegistryRepository, who: str) -> None:
        self._repository = repository
        self.who = who

    async def apply(self, upserts: dict[str, list[Any]], deletes: dict[str, list[str | int]] | None = None, *,
                    reason: str = "", effective_from: Mapping[str, int] | None = None) -> None:
        """``RegistryRepository.registry_apply`` in this editor's name."""
        await self._repository.registry_apply(upserts, deletes, who=self.who, reason=reason,
                                              effective_from=effective_from)
