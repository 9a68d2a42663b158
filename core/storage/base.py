"""The storage interface every backend implements.

Callers (ingest, intervals, the registry, the API) use only this interface, so
a PostgreSQL backend can replace SQLite without touching them. Methods speak
the domain: registry objects, reading columns as numpy arrays, hourly rows.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from balans_edge.core.findings import SUPPRESS_S
from balans_edge.core.model import Account, Concentrator, Group, Meter, RadioModule

if TYPE_CHECKING:
    from balans_edge.core.balance import BalanceSeries
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


class StorageError(Exception):
    """Storage is unavailable or refused a write; the caller may retry later."""


@dataclass(frozen=True, slots=True)
class MeterHead:
    """The newest stored reading of a meter: where in-order ingest continues."""

    meter: int
    ts: int
    counter: int
    pulses: int


@dataclass(slots=True)
class ReadingRows:
    """Columns of stored readings of one or more meters, sorted by (meter, ts)."""

    meter: np.ndarray
    ts: np.ndarray
    counter: np.ndarray
    pulses: np.ndarray
    status: np.ndarray
    flags: np.ndarray

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def empty(cls) -> ReadingRows:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, z, z, z)

    @classmethod
    def from_tuples(cls, rows: list[tuple]) -> ReadingRows:
        if not rows:
            return cls.empty()
        a = np.array(rows, dtype=np.int64)
        return cls(*(a[:, i] for i in range(6)))

    def select(self, mask: np.ndarray) -> ReadingRows:
        return ReadingRows(*(getattr(self, f)[mask] for f in self.__slots__))


@dataclass(frozen=True, slots=True)
class ModuleHealth:
    """What a radio module reports about itself with its readings (DMesh
    READINGS): at ``ts``, its battery, the RSSI of the link to its parent and
    its hops to the concentrator (None when out of range: the stored value stays)."""

    module_id: int
    ts: int
    battery_mv: int
    rssi: int
    hops: int | None


@dataclass(frozen=True, slots=True)
class PeriodSums:
    """One meter's stored hourly consumption summed per period (``consumption_periods``):
    storage sums where the rows are, the rules of what a sum means are in
    ``core.intervals``."""

    total: np.ndarray
    """(P,) float64: sum of the values stored in the period (0 where none)."""
    known: np.ndarray
    """(P,) int64: hours of the period with a value."""
    stored: np.ndarray
    """(P,) int64: hours of the period computed at all (with a value or missing)."""
    worst: np.ndarray
    """(P,) int64: the worst quality code among the stored hours (0 where none)."""


@dataclass(frozen=True, slots=True)
class BalanceSums:
    """Groups' stored hourly balance summed per period (``balance_periods``) and how
    many of its stored hours say anything: storage sums where the rows are; what
    the hours that say nothing mean (missing meters) is decided in
    ``core.balance_queries``."""

    series: BalanceSeries
    """(G, P) sums of every column of the stored hours; ``t``: each period's first hour."""
    counted: np.ndarray
    """(G, P) int64: stored hours in which any member or input meter was counted."""
    blind: np.ndarray
    """(G, P) int64: stored hours with members counted but no input meter counted."""


@dataclass(slots=True)
class IngestWrite:
    """Everything one ingest batch changes, committed in one transaction."""

    inserts: ReadingRows = field(default_factory=ReadingRows.empty)
    updates: ReadingRows = field(default_factory=ReadingRows.empty)
    """Existing readings whose pulses or flags changed (a back-filled reset)."""
    quarantine: list[tuple[int, int, int, int, int, str]] = field(default_factory=list)
    """(module_id, channel, ts, counter, status, reason) of readings no meter claims."""
    dirty: list[tuple[int, int, int]] = field(default_factory=list)
    """(meter, lo, hi): time ranges whose hourly consumption must be recomputed."""
    released: list[tuple[int, int, int]] = field(default_factory=list)
    """(module_id, channel, ts) of quarantined readings a meter now claims."""
    module_seen: list[tuple[int, int]] = field(default_factory=list)
    """(module_id, ts) of modules that reported."""
    module_health: list[ModuleHealth] = field(default_factory=list)
    """The newest health report of each module that sent one with its readings."""
    received_at: int = 0


@dataclass(frozen=True, slots=True)
class ModuleEvent:
    """An event a radio module reported (magnet, leak, valve, route...)."""

    concentrator_id: int
    module_id: int
    ts: int
    code: int
    value: int = 0
    received_at: int = 0


@dataclass(frozen=True, slots=True)
class ModuleRoute:
    """One module's entry in a topology report: its route and health."""

    module_id: int
    parent_id: int
    """0 when the module talks to the concentrator directly."""
    hops: int
    rssi: int
    battery_mv: int
    fw_version: int
    """major << 8 | minor."""
    channels: int
    state: int
    """0 online, 1 lost."""

    @property
    def firmware(self) -> str:
        return f"{self.fw_version >> 8}.{self.fw_version & 0xFF}"


CONNECTION_EVENTS = frozenset({"connect", "auth_failed", "disconnect", "replaced"})


@dataclass(frozen=True, slots=True)
class ConnectionEvent:
    """A device link coming up, failing authentication, going down or being replaced."""

    concentrator_id: int | None
    event: str
    t: int
    peer: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class DirtyRange:
    id: int
    meter: int
    lo: int
    hi: int


TAG_QUALITIES = frozenset({"good", "stale", "comm_fail"})
"""Quality of a polled tag sample: a fresh value, an old or refused one, the device unreachable."""


@dataclass(frozen=True, slots=True)
class TagRow:
    """One stored sample of a polled tag (a PLC's tank level, pump state, totaliser)."""

    tag: str
    """'<device>/<tag>' as configured."""
    ts: int
    value: float | None
    """None unless the quality is good."""
    quality: str


EXPORT_KINDS = ("readings", "consumption", "balance_hourly", "balance_daily", "findings", "alarms", "network")
"""What an export target can take: meter readings, hourly consumption, the hourly
and daily balance of groups, findings, alarms and radio network health. Each
follows a stored table, so a point is queued in the transaction that stores it."""

EXPORT_POLICIES = ("drop_oldest", "block")
"""What a full export queue does: drop its oldest point (counted), or refuse the
write that would add one (so devices are not acknowledged and send again)."""


@dataclass(frozen=True, slots=True)
class ExportTarget:
    """An export target as storage knows it: what it takes and its queue's bound."""

    name: str
    kinds: tuple[str, ...]
    max_queue: int
    when_full: str = "drop_oldest"


@dataclass(slots=True)
class ExportBatch:
    """The oldest points of a target's queue and the stored rows they refer to.

    ``ids`` are every queue entry taken, oldest first; ``rows`` maps a kind to
    the source rows of its entries (each with ``qid``, the entry's id). An entry
    whose source row no longer exists (a deleted group's balance) has no row."""

    ids: list[int]
    rows: dict[str, list[dict[str, Any]]]


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


class Storage(ABC):
    """A durable store for the registry, readings and derived intervals."""

    @abstractmethod
    async def open(self) -> None:
        """Connect, create or migrate the schema."""

    @abstractmethod
    async def close(self) -> None:
        """Commit what was submitted, then release the database."""

    @abstractmethod
    async def flush(self) -> None:
        """Return once every write submitted before the call is committed."""

    @abstractmethod
    async def schema_version(self) -> int: ...

    # registry -----------------------------------------------------------

    @abstractmethod
    async def registry_version(self) -> int:
        """A number that changes whenever the registry changes."""

    @abstractmethod
    async def registry_list(self, kind: str) -> list[Any]:
        """All objects of one registry kind, ordered by key."""

    @abstractmethod
    async def registry_get(self, kind: str, key: str | int) -> Any | None: ...

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
    async def meter_keys(self) -> dict[str, int]:
        """meter_id -> the internal integer key used by readings and intervals."""

    @abstractmethod
    async def meters_by_key(self) -> list[tuple[int, Meter]]:
        """Every meter with its internal key, ordered by key."""

    # registry history: meter parameter periods and the audit --------------

    @abstractmethod
    async def meter_periods(self, meters: Sequence[int] | None = None) -> dict[int, list[MeterPeriod]]:
        """Parameter periods of meters (internal keys; all when None), oldest first."""

    @abstractmethod
    async def register_table(self, meters: Sequence[int] | None = None) -> RegisterTable:
        """The periods as a ``RegisterTable``: what turns pulses into register values."""

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

    @abstractmethod
    async def registry_audit(self, query: AuditQuery) -> list[dict[str, Any]]:
        """Audit rows matching ``query``, newest first, before and after decoded."""

    # ingest -------------------------------------------------------------

    @abstractmethod
    async def load_heads(self) -> list[MeterHead]:
        """The newest committed reading of every meter that has one."""

    @abstractmethod
    async def reading_times(self, before: int) -> dict[int, int]:
        """Meter key -> time of its newest reading at or before ``before`` (meters
        without one are left out): what was known of the meters at that time."""

    @abstractmethod
    async def readings_around(self, meter: int, ts: int) -> ReadingRows:
        """The last reading before ``ts`` (if any) and every reading at or after it."""

    @abstractmethod
    async def readings_at(self, meters: np.ndarray, ts: np.ndarray) -> ReadingRows:
        """The stored readings at exactly these (meter, ts) pairs (those that exist),
        sorted by (meter, ts): what a re-sent batch duplicates, in one query."""

    @abstractmethod
    async def readings_spanning(self, spans: Sequence[tuple[int, int, int]]) -> ReadingRows:
        """For each (meter, lo, hi): the meter's readings with lo <= ts <= hi, the
        last one before lo and the first one after hi (those that exist), sorted
        by (meter, ts); the spans name different meters. One query for a whole
        batch of late readings, however much is stored after them."""

    @abstractmethod
    async def commit_ingest(self, write: IngestWrite) -> None:
        """Commit one ingest batch durably (synchronous to disk). Batches
        submitted together may share one transaction and one fsync. Raises
        StorageError when nothing could be committed.

        In the same transaction ``module_health`` updates the battery, RSSI
        and hops of registered modules (unless the module has newer news: its
        ``last_seen`` is later) and appends to their health history
        (``module_reports``)."""

    @abstractmethod
    async def quarantine(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Readings from unknown modules or channels, newest first."""

    @abstractmethod
    async def quarantine_page(self, after: tuple[int, int, int] | None, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` quarantined readings in (module_id, channel, ts) order,
        after ``after``: a scan in pages that rows leaving meanwhile do not disturb."""

    @abstractmethod
    async def quarantine_stats(self) -> dict[str, Any]:
        """``{"rows", "oldest_received_at", "dropped": {"age", "size"}}``: what the
        quarantine holds and how many readings retention dropped, ever."""

    @abstractmethod
    async def prune_quarantine(self, max_rows: int, received_before: int) -> None:
        """Drop quarantined readings received before ``received_before``, then the
        oldest received beyond ``max_rows``, counting each by reason, in one transaction."""

    # readings and intervals --------------------------------------------

    @abstractmethod
    async def readings(self, meter: int, t0: int, t1: int) -> ReadingRows:
        """Stored readings of one meter with t0 <= ts < t1."""

    @abstractmethod
    async def readings_of(self, meters: list[int], t0: int, t1: int) -> ReadingRows:
        """Stored readings of several meters with t0 <= ts < t1, sorted by (meter, ts)."""

    @abstractmethod
    async def has_readings(self, meter: int) -> bool: ...


    @abstractmethod
    async def take_dirty(self, limit: int = 10000) -> list[DirtyRange]:
        """Ranges waiting for interval recomputation (not removed until saved)."""

    @abstractmethod
    async def save_intervals(
        self, meter_rows: list[tuple[int, int, float | None, int]], done: list[int]
    ) -> None:
        """Upsert hourly rows (meter, t, value, quality code) and drop the
        dirty ranges ``done`` in the same transaction."""

    @abstractmethod
    async def hourly(self, meter: int, t0: int, t1: int) -> list[tuple[int, float | None, int]]:
        """Stored hourly rows (t, value, quality code) with t0 <= t < t1."""

    @abstractmethod
    async def consumption_periods(self, meter: int, edges: np.ndarray) -> PeriodSums:
        """The meter's stored hours summed per period: period i holds the hours
        edges[i] <= t < edges[i + 1] (hour-aligned, increasing). Summed where the
        rows are, off the event loop: a request may span 440,000 hours."""

    # balance ------------------------------------------------------------

    @abstractmethod
    async def consumption_matrix(self, meters: Sequence[int], t0: int, t1: int) -> tuple[np.ndarray, np.ndarray]:
        """Hourly values of ``meters`` for the hours t0 <= t < t1 (hour-aligned)
        as two (meters x hours) arrays in the order given: float64 values (NaN
        where there is none) and int8 quality codes (missing where no row)."""

    @abstractmethod
    async def take_balance_dirty(self, limit: int = 10000) -> list[tuple[int, int, int]]:
        """(id, lo, hi) ranges of hours whose balance must be recomputed (oldest first)."""

    @abstractmethod
    async def save_balance(self, series: BalanceSeries, done: list[int]) -> None:
        """Store hourly balance rows and drop the dirty ranges ``done``, in one transaction."""

    @abstractmethod
    async def balance(self, group_ids: Sequence[str], t0: int, t1: int) -> BalanceSeries:
        """Stored hourly balance of the groups for t0 <= t < t1, every hour
        present (hours never computed are zeros: no members, no input)."""

    @abstractmethod
    async def balance_periods(self, group_ids: Sequence[str], edges: np.ndarray) -> BalanceSums:
        """The groups' stored hourly balance summed per period (as ``balance``
        would give it summed over edges[i] <= t < edges[i + 1]; ``t`` of the
        series is each period's first hour), with the hours that count anything.
        Summed where the rows are, off the event loop."""

    # journals -----------------------------------------------------------

    @abstractmethod
    async def journal_append(self, kind: str, record: dict[str, Any]) -> int:
        """Append a record to the ``commands``, ``findings`` or ``alarms``
        journal durably; return its id."""

    @abstractmethod
    async def journal_update(self, kind: str, record_id: int, changes: dict[str, Any]) -> None:
        """Change fields of a journal record (a command's outcome once known)."""

    @abstractmethod
    async def journal_list(self, kind: str, limit: int = 100) -> list[dict[str, Any]]:
        """The newest records of a journal, newest first."""

    @abstractmethod
    async def journal_get(self, kind: str, record_id: int) -> dict[str, Any] | None:
        """One journal record, or None."""

    @abstractmethod
    async def commands(
        self,
        target: str | None = None,
        outcome: str | None = None,
        code: str | None = None,
        requested_by: str | None = None,
        t0: int | None = None,
        t1: int | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The command audit, newest first: the ``commands`` journal records that
        match every filter given (``t0 <= t < t1``)."""

    @abstractmethod
    async def settle_pending_commands(self, note: str) -> list[dict[str, Any]]:
        """Commands still ``pending`` (their outcome was never recorded: the process
        stopped while they ran) become ``failed`` with ``note`` added to their
        detail, in one transaction; return them as they are now."""

    # findings -------------------------------------------------------------

    @abstractmethod
    async def record_finding(self, record: dict[str, Any], suppress_s: int = SUPPRESS_S) -> tuple[int, bool]:
        """Store a detector's finding once per problem; return (id, new).

        An open or acknowledged finding with the same detector, subject and kind
        is updated (last_seen, seen, message, severity, data) instead of being
        added again, so detectors may report on every run. A resolved one that
        recurs is a new finding. A false alarm marked within ``suppress_s``
        seconds suppresses the report: (its id, False)."""

    @abstractmethod
    async def findings(
        self,
        group: str | None = None,
        kind: str | None = None,
        status: str | None = None,
        subject: str | None = None,
        limit: int = 100,
        since: int | None = None,
    ) -> list[dict[str, Any]]:
        """Stored findings, most recently seen first, data and feedback decoded;
        ``since``: only those first seen at or after it."""

    @abstractmethod
    async def finding(self, finding_id: int) -> dict[str, Any] | None:
        """One stored finding, or None."""

    @abstractmethod
    async def set_finding_status(
        self, finding_id: int, status: str, by: str, note: str = "", t: int | None = None
    ) -> dict[str, Any] | None:
        """Move a finding through its lifecycle and keep the operator's answer;
        None if there is no such finding, ValueError on a change the lifecycle
        (balans_edge.core.findings) does not allow."""

    # device reports -------------------------------------------------------

    @abstractmethod
    async def store_module_events(self, events: list[ModuleEvent]) -> None:
        """Store module events durably; an event already stored (same module,
        ts and code) is kept as it is."""

    @abstractmethod
    async def store_topology(self, concentrator_id: int, t: int, routes: list[ModuleRoute]) -> None:
        """Append a topology snapshot taken at ``t`` to the route history and,
        in the same transaction, update the registry rows of the modules that
        exist (parent, hops, RSSI, battery, firmware, last seen). Modules that
        are not registered are not created."""

    @abstractmethod
    async def store_command_result(
        self, concentrator_id: int, command_id: int, result: int, status: int, received_at: int
    ) -> None:
        """Store the outcome of a device command durably (a repeated report replaces it)."""

    @abstractmethod
    async def store_firmware_result(self, concentrator_id: int, image_id: int, result: int, received_at: int,
                                    target: int | None = None, version: str | None = None) -> None:
        """Store the outcome of a firmware transfer durably (a repeated report
        replaces it), with the pushed image's target and version when known (a
        repeated report without them keeps those stored)."""

    @abstractmethod
    async def log_connection(self, event: ConnectionEvent) -> None:
        """Append an event to the device connection log durably."""

    @abstractmethod
    async def module_events(self, module_id: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Stored module events (of one module or all), newest first."""

    @abstractmethod
    async def topology_history(self, module_id: int | None = None, limit: int = 1000,
                               before: int | None = None) -> list[dict[str, Any]]:
        """Stored topology entries (of one module or all; only those with t <= ``before``
        when given), newest first."""

    @abstractmethod
    async def module_reports(self, module_id: int, limit: int = 1000,
                             before: int | None = None) -> list[dict[str, Any]]:
        """The health history of a module from its readings (only the hours with
        t <= ``before`` when given), newest first: one entry per hour (the first
        report in it) with ``t`` (the hour), ``battery_mv``, ``rssi`` and ``hops``."""

    @abstractmethod
    async def latest_module_reports(self, before: int) -> list[dict[str, Any]]:
        """The newest health report (columns of ``module_reports``) of every module
        that has one at or before ``before``: how the modules reported themselves
        at a past time."""

    async def latest_topology(self, before: int | None = None) -> list[dict[str, Any]]:
        """The newest topology entry of every module (columns of ``topology_history``;
        of the entries with t <= ``before`` when given) with ``online_t``: the time of
        its newest entry in state online (None if none). Backends should override
        this scan of the whole history with one query."""
        latest: dict[int, dict[str, Any]] = {}
        for row in reversed(await self.topology_history(None, limit=2**31, before=before)):
            online_t = row["t"] if row["state"] == 0 else latest.get(row["module_id"], {}).get("online_t")
            latest[row["module_id"]] = {**row, "online_t": online_t}
        return [latest[m] for m in sorted(latest)]

    @abstractmethod
    async def command_results(self, limit: int = 100) -> list[dict[str, Any]]:
        """Stored command outcomes, newest first."""

    @abstractmethod
    async def firmware_results(self, limit: int = 100, concentrator_id: int | None = None) -> list[dict[str, Any]]:
        """Stored firmware outcomes (of one concentrator or all), newest first."""

    @abstractmethod
    async def connection_log(self, concentrator_id: int | None = None, limit: int = 100,
                             before: int | None = None) -> list[dict[str, Any]]:
        """The device connection log (of one concentrator or all; only events with
        t <= ``before`` when given), newest first."""

    # polled tags ------------------------------------------------------------

    @abstractmethod
    async def store_tag_values(self, samples: Sequence[TagRow]) -> None:
        """Store samples of polled tags durably, all in one transaction. A tag
        keeps one sample per second: a later sample of the same second replaces
        it. Raises ValueError on an unknown quality (nothing is stored)."""

    @abstractmethod
    async def tag_values(self, tag: str, t0: int, t1: int, limit: int = 10000) -> list[dict[str, Any]]:
        """Stored samples of one tag with t0 <= ts < t1, oldest first: ``tag``,
        ``ts``, ``value`` (None unless good) and ``quality``."""

    @abstractmethod
    async def latest_tag_values(self) -> list[dict[str, Any]]:
        """The newest stored sample of every tag, by tag id, with ``last_good_value``
        and ``last_good_ts`` (None when the tag never had a good value)."""

    # protocol bridges -------------------------------------------------------

    @abstractmethod
    async def bridge_slots(self, bridge: str) -> dict[str, int]:
        """object id -> slot of every object ``bridge`` ever gave a slot to (removed
        objects included: their slots are never given to another object)."""

    @abstractmethod
    async def allocate_bridge_slots(self, bridge: str, object_ids: Sequence[str], t: int) -> dict[str, int]:
        """Give each of ``object_ids`` that has no slot in ``bridge`` the next slot
        (one past the highest ever allocated), in the order given, durably and in
        one transaction; return every slot of the bridge. Idempotent: an object
        keeps its slot, and callers racing each other (tasks or processes) never
        get the same slot for two objects."""

    @abstractmethod
    async def latest_readings(self, meters: Sequence[int] | None = None) -> ReadingRows:
        """The newest stored reading of each of ``meters`` (internal keys; every
        meter when None) that has one, sorted by meter: what a bridge shows as
        the meter's present state."""

    # export queues -------------------------------------------------------------

    @abstractmethod
    async def export_configure(self, targets: Sequence[ExportTarget]) -> None:
        """Make exactly ``targets`` collect points, in one transaction: each gets a
        durable queue (kept across restarts) that every later write of an
        exported kind appends to in its own transaction, bounded by ``max_queue``
        with its ``when_full`` policy. Targets not listed stop collecting; their
        queues are kept until ``export_remove``."""

    @abstractmethod
    async def export_take(self, target: str, limit: int, after: int = 0) -> ExportBatch:
        """The oldest ``limit`` entries of a target's queue (those after entry id
        ``after``: the sender reads the next batch while one is on the wire) with
        their source rows; entries stay queued until acknowledged or dead-lettered."""

    @abstractmethod
    async def export_ack(self, target: str, ids: Sequence[int], sent: int) -> None:
        """Remove queue entries the target accepted (or that had nothing to send)
        and count ``sent`` points as sent, in one transaction."""

    @abstractmethod
    async def export_dead_letter(self, target: str, ids: Sequence[int], status: int, message: str,
                                 lines: str, points: int) -> None:
        """Move entries the target refused for good to the dead letters, with the
        refused lines and the target's answer, in one transaction."""

    @abstractmethod
    async def export_resend(self, target: str | None = None, ids: Sequence[int] | None = None) -> int:
        """Mark dead letters (of one target or all; only ``ids`` when given) to be
        sent again by their target's exporter; return how many were marked."""

    @abstractmethod
    async def export_resend_next(self, target: str) -> dict[str, Any] | None:
        """The oldest dead letter of ``target`` marked to be sent again (``id``,
        ``points``, ``lines``), or None."""

    @abstractmethod
    async def export_resent(self, target: str, dead_id: int, status: int, message: str) -> None:
        """The target's answer to a dead letter sent again: accepted (2xx), it leaves
        the dead letters and its points count as sent; refused, it stays with the
        new answer and is no longer marked."""

    @abstractmethod
    async def export_note_failure(self, target: str, error: str, retries: int = 1) -> None:
        """Record a failed attempt (the error, and how many requests will be repeated)."""

    @abstractmethod
    async def export_state(self, target: str | None = None) -> list[dict[str, Any]]:
        """Targets (one or all) with their queue's ``depth`` and ``oldest_t`` (when
        its oldest entry was queued) and their lifetime counters."""

    @abstractmethod
    async def export_dead_letters(self, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Dead letters (of one target or all), newest first."""

    @abstractmethod
    async def export_backfill(self, target: str, kind: str, t0: int, t1: int, after: tuple[Any, Any] | None,
                              limit: int, times: Sequence[int] | None = None) -> tuple[int, tuple[Any, Any] | None]:
        """Queue up to ``limit`` stored points of ``kind`` with t0 <= time < t1 whose
        key comes after ``after`` (keys in storage order), for back-filling history;
        with ``times``, only those at these times. Return how many were queued and
        the last key (None when nothing is left)."""

    @abstractmethod
    async def export_backfill_count(self, kind: str, t0: int, t1: int, times: Sequence[int] | None = None) -> int:
        """How many points ``export_backfill`` would queue over the whole range."""

    @abstractmethod
    async def export_remove(self, target: str) -> int:
        """Stop collecting for a target and delete it with its queue and dead
        letters; return how many queued points were discarded."""
