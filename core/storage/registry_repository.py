"""The registry as storage keeps it: concentrators, modules, accounts, meters and
groups, with the audit of every change and the validity periods of meters'
parameters (a change starts a new period; readings keep the parameters they
were taken under).

A core repository: every backend implements it (``Storage`` composes it).
Objects in and out are the domain's (``core.model``), never rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from balans_edge.core.model import Account, Concentrator, Group, Meter, RadioModule

if TYPE_CHECKING:
    from balans_edge.core.periods import MeterPeriod, RegisterTable


REGISTRY_KINDS: dict[str, type] = {
    "concentrators": Concentrator,
    "modules": RadioModule,
    "accounts": Account,
    "meters": Meter,
    "groups": Group,
}
"""Registry kinds in dependency order (a meter refers to a module and an account;
groups and meters refer to each other, so they are checked together)."""


AUDIT_LIMIT = 1000
"""Most audit rows one query returns."""


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """Filters of the registry audit (None: any)."""

    kind: str | None = None
    object_id: str | None = None
    who: str | None = None
    action: str | None = None
    t0: int | None = None
    t1: int | None = None
    limit: int = 100


class RegistryReader(ABC):
    """The registry as plugins and queries read it: objects, meters' keys and parameter periods, the audit."""

    @abstractmethod
    async def registry_version(self) -> int:
        """A number that changes whenever the registry changes."""

    @abstractmethod
    async def registry_list(self, kind: str) -> list[Any]:
        """All objects of one registry kind, ordered by key."""

    @abstractmethod
    async def registry_get(self, kind: str, key: str | int) -> Any | None:
        """One object of a registry kind by its key, or None."""

    @abstractmethod
    async def meter_keys(self) -> dict[str, int]:
        """meter_id -> the internal integer key used by readings and intervals."""

    @abstractmethod
    async def meters_by_key(self) -> list[tuple[int, Meter]]:
        """Every meter with its internal key, ordered by key."""

    @abstractmethod
    async def meter_periods(self, meters: Sequence[int] | None = None) -> dict[int, list[MeterPeriod]]:
        """Parameter periods of meters (internal keys; all when None), oldest first."""

    @abstractmethod
    async def register_table(self, meters: Sequence[int] | None = None) -> RegisterTable:
        """The periods as a ``RegisterTable``: what turns pulses into register values."""

    @abstractmethod
    async def registry_audit(self, query: AuditQuery) -> list[dict[str, Any]]:
        """Audit rows matching ``query``, newest first, before and after decoded."""


class RegistryRepository(RegistryReader):
    """The registry, its audit and the meters' parameter periods."""

    def on_registry_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every committed change of the registry (an edit,
        a correction, moved anchors). The server publishes ``core.bus.RegistryChanged``
        from it, so caches of the registry refresh when it changes instead of
        polling ``registry_version``. A backend shared by several processes relays
        the other processes' changes too."""
        self.__dict__.setdefault("_registry_listeners", []).append(listener)

    def _registry_changed(self) -> None:
        """Backends call this after committing a change of the registry."""
        for listener in self.__dict__.get("_registry_listeners", ()):
            listener()

    @abstractmethod
    async def registry_apply(
        self,
        upserts: dict[str, list[Any]],
        deletes: dict[str, list[str | int]] | None = None,
        *,
        who: str = "system",
        reason: str = "",
        effective_from: Mapping[str, int] | None = None,
        now: int | None = None,
    ) -> None:
        """Insert or update objects of several kinds and delete others, all in one
        transaction: either everything is written or nothing is. Each object that
        changes gets a row in the registry audit (``who``, ``reason``) in the same
        transaction. A meter whose parameters (``core.periods.PARAMETERS``) change
        starts a new period at ``effective_from[meter_id]`` (default: now, or
        just after its newest reading; for a meter without readings its latest
        period is replaced); StorageError when that time lies before the meter's
        newest reading or latest period: changing the past is ``correct_meter``."""

    @abstractmethod
    async def refresh_anchors(self, meters: Sequence[int]) -> None:
        """Recompute the anchor pulses of these meters' later periods from their
        readings (after readings landed before a change); the registry version
        moves when one changed, so caches of register values reload."""

    @abstractmethod
    async def correct_meter(self, meter_id: str, changes: Mapping[str, Any], t0: int, t1: int | None, *,
                            who: str, reason: str, now: int | None = None) -> dict[str, Any]:
        """Give ``changes`` (correctable parameters) to the meter's time [t0, t1)
        (t1 None: from t0 on), mark the affected hours for recomputation and
        audit it, in one transaction; return the periods ``before`` and ``after``.
        KeyError for an unknown meter, ValueError for an impossible correction."""
