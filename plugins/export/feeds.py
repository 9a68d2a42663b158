"""Where the exported kinds live in core's tables: the export plugin's one
description of core's schema, in no dialect.

The queues are filled by triggers on core's tables (``FEEDS``), and the sender
and the back-fill read the points back from them (``SOURCES``). Both name
core's tables and columns, which is what a plugin's SQL otherwise never does
(``core.storage.gateway``): the export plugin does it because a point must be
queued in the transaction that stores its data whatever stores it, and a
batch read with one join per kind. So the names are kept here, once, each
dialect's SQL is generated from them (``sql_sqlite``), and a test checks them
against the schema core's migrations make.

Triggers are named ``export__<feed>``: the owner, two underscores, the feed.
That is the rule for any plugin that feeds from core's tables
(docs/storage.md): when the plugin does not run (disabled, not installed,
failed), core drops its triggers at start, so nothing fills a queue that
nobody drains; the plugin creates them again when it runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from balans_edge.core.balance import BalanceSeries

OWNER = "export"
"""The owner of the plugin's tables and triggers (its ``MigrationSet``)."""

EXPORT_KINDS = ("readings", "consumption", "balance_hourly", "balance_daily", "findings", "alarms", "network")
"""What an export target can take: meter readings, hourly consumption, the hourly
and daily balance of groups, findings, alarms and radio network health. Each
follows a stored table, so a point is queued in the transaction that stores it."""

EXPORT_POLICIES = ("drop_oldest", "block")
"""What a full export queue does: drop its oldest point (counted), or refuse the
write that would add one (so devices are not acknowledged and send again)."""

KIND_CODES = {kind: i + 1 for i, kind in enumerate(EXPORT_KINDS)}
"""Kind numbers stored in queue entries (part of the on-disk format: never renumber)."""

TRIGGER_PREFIX = f"{OWNER}__"
"""Every trigger the plugin creates starts with this (the owner and ``__``)."""
LEGACY_TRIGGER_PREFIX = f"{OWNER}_"
"""How core's storage named the same triggers before the plugin owned them (releases
up to schema 15): dropped and created again under ``TRIGGER_PREFIX`` when the
plugin first configures its targets."""

BALANCE_COLUMNS = BalanceSeries.COLUMNS
"""The stored columns of a group's hourly balance (``balance_hourly``)."""


@dataclass(frozen=True, slots=True)
class Feed:
    """One trigger: a write to ``table`` that queues points of some kinds."""

    name: str
    """The trigger's name after ``TRIGGER_PREFIX``."""
    table: str
    event: Literal["insert", "update"]
    keys: dict[str, tuple[str, str | None]]
    """kind -> the columns of the written row that are the entry's key (k1, k2);
    k2 None: a one-column key (stored as 0)."""
    changed: tuple[str, ...] = field(default=())
    """For an update: queue only when one of these columns really changed
    (empty: on every update)."""

    @property
    def trigger(self) -> str:
        return TRIGGER_PREFIX + self.name

    @property
    def legacy_trigger(self) -> str:
        return LEGACY_TRIGGER_PREFIX + self.name


_BALANCE_KEYS = {"balance_hourly": ("group_id", "t"), "balance_daily": ("group_id", "t")}
FEEDS = (
    Feed("readings_inserted", "readings", "insert", {"readings": ("meter", "ts")}),
    # A back-filled counter reset re-chains stored readings: their register values change.
    Feed("readings_updated", "readings", "update", {"readings": ("meter", "ts")}, ("pulses", "flags")),
    Feed("consumption_inserted", "consumption_hourly", "insert", {"consumption": ("meter", "t")}),
    # The interval worker rewrites whole ranges; only hours that really changed are sent again.
    Feed("consumption_updated", "consumption_hourly", "update", {"consumption": ("meter", "t")},
         ("value", "quality")),
    Feed("balance_inserted", "balance_hourly", "insert", _BALANCE_KEYS),
    Feed("balance_updated", "balance_hourly", "update", _BALANCE_KEYS, BALANCE_COLUMNS),
    Feed("findings_inserted", "findings", "insert", {"findings": ("id", None)}),
    # A finding seen again or answered by an operator is sent again (same time, newest fields).
    Feed("findings_updated", "findings", "update", {"findings": ("id", None)}),
    Feed("alarms_inserted", "alarms", "insert", {"alarms": ("id", None)}),
    Feed("network_inserted", "topology_snapshots", "insert", {"network": ("module_id", "t")}),
)


@dataclass(frozen=True, slots=True)
class Source:
    """Where the points of a kind are stored: for back-fill and for reading them back."""

    table: str
    k1: str
    k2: str | None
    """Column of the entry's k2, or None when the kind has a one-column key."""
    time: tuple[str, ...]
    """The point's time for back-fill ranges: the first of these columns that is not null."""
    columns: tuple[str, ...] | None
    """The columns sent (the sender's input); None: every column."""
    exists_in: str | None = None
    """Read from this table instead, by k1 only (``balance_daily``: the sender
    computes a day from the stored hours; the entry needs only its group)."""


SOURCES = {
    "readings": Source("readings", "meter", "ts", ("ts",), ("meter", "ts", "counter", "pulses", "status", "flags")),
    "consumption": Source("consumption_hourly", "meter", "t", ("t",), ("meter", "t", "value", "quality")),
    "balance_hourly": Source("balance_hourly", "group_id", "t", ("t",), ("group_id", "t", *BALANCE_COLUMNS)),
    "balance_daily": Source("balance_hourly", "group_id", "t", ("t",), (), exists_in="groups"),
    "findings": Source("findings", "id", None, ("first_seen", "t"), None),
    "alarms": Source("alarms", "id", None, ("t",), None),
    "network": Source("topology_snapshots", "module_id", "t", ("t",), None),
}
