"""The export plugin's SQL for SQLite: its tables, the per-target queues and the
triggers that fill them, every query of ``ExportRepository`` (``repository``).

Why triggers generated from the configuration: a point must be queued in the
transaction that stores its data, whatever path stores it (ingest, the
interval and balance workers, a command-line recomputation, the analytics
journal), and the ingest path must stay fast. A trigger per source table with
one insert per target (``INSERT INTO export_queue_<id>``) and its bound check
costs about 2 µs per point and target (bench/export.py); a generic trigger
that looks up the targets in a table, a shared queue with a per-target index
and a depth counter, or triggers on the queue itself measured two to four
times that on the same machine.

A queue entry is a reference, (kind, k1, k2) such as (readings, meter, ts),
not a rendered point: the sender reads the row when it sends, so a row that
changed again before it was sent (an hour's consumption recomputed) goes out
once with its newest value, and queue entries stay small.

Bound: entries get consecutive ids (rowids: a new entry is the highest plus
one, and entries leave oldest first), so "the queue holds more than
``max_queue`` entries" is exactly "entry ``new id - max_queue`` still exists",
one rowid lookup in the trigger. ``block`` then aborts the write (the device is
not acknowledged and sends again); ``drop_oldest`` deletes that entry and
counts it. The depth shown is the id span (``max - min + 1``): exact, except
for the moment between the acknowledgements of two halves of a split batch.

Parameters are ``?``, in the order each method's docstring gives; the
repository binds them. A PostgreSQL module would offer the same methods (the
triggers there are functions: one per feed, ``RAISE EXCEPTION`` for a full
blocking queue).
"""

from __future__ import annotations

from collections.abc import Sequence

from balans_edge.plugins.export.feeds import FEEDS, KIND_CODES, LEGACY_TRIGGER_PREFIX, SOURCES, Feed, Source
from balans_edge.plugins.export.records import QUEUE_PREFIX, StoredTarget, queue_table


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _source_join(kind: str, source: Source) -> str:
    """How the queue entries of a kind (alias ``q``) find their stored rows (alias ``s``)."""
    if source.exists_in is not None:
        return f"JOIN {source.exists_in} s ON s.{source.k1} = q.k1"
    if source.k2 is None:
        return f"JOIN {source.table} s ON s.{source.k1} = q.k1"
    return f"JOIN {source.table} s ON s.{source.k1} = q.k1 AND s.{source.k2} = q.k2"


def _source_columns(source: Source) -> str:
    if source.exists_in is not None:
        return f"q.k1 AS {source.k1}, q.k2 AS {source.k2}"
    if source.columns is None:
        return "s.*"
    return ", ".join(f"s.{c}" for c in source.columns)


def _time(source: Source) -> str:
    return source.time[0] if len(source.time) == 1 else f"coalesce({', '.join(source.time)})"


class SqliteQueueSql:
    """Every statement of the export repository, in SQLite's dialect."""

    dialect = "sqlite"

    # targets ---------------------------------------------------------------------

    targets = "SELECT id, name, kinds, max_queue, when_full FROM export_targets ORDER BY id"
    target_id = "SELECT id FROM export_targets WHERE name = ?"
    upsert_target = (
        "INSERT INTO export_targets (id, name, kinds, max_queue, when_full) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET kinds = excluded.kinds, max_queue = excluded.max_queue, "
        "when_full = excluded.when_full")
    stop_collecting = "UPDATE export_targets SET kinds = '' WHERE name = ?"
    delete_target = "DELETE FROM export_targets WHERE id = ?"
    delete_dead_of = "DELETE FROM export_dead WHERE target = ?"

    def create_queue(self, target_id: int) -> str:
        """The queue of a target, unless it exists (no parameters)."""
        return (f"CREATE TABLE IF NOT EXISTS {queue_table(target_id)} (id INTEGER PRIMARY KEY, "
                "kind INTEGER NOT NULL, k1 NOT NULL, k2 INTEGER NOT NULL, t INTEGER NOT NULL)")

    def drop_queue(self, target_id: int) -> str:
        return f"DROP TABLE IF EXISTS {queue_table(target_id)}"

    def trim_queue(self, target_id: int) -> tuple[str, str]:
        """Count, then delete, the entries beyond a smaller bound, as a full queue
        would: (max_queue, target id), then (max_queue,)."""
        q = queue_table(target_id)
        return (f"UPDATE export_targets SET dropped = dropped + (SELECT count(*) FROM {q} "
                f"WHERE id <= (SELECT max(id) FROM {q}) - ?) WHERE id = ?",
                f"DELETE FROM {q} WHERE id <= (SELECT max(id) FROM {q}) - ?")

    # triggers --------------------------------------------------------------------

    def triggers(self, specs: Sequence[StoredTarget]) -> list[str]:
        """Drop every trigger of the plugin (under its current and its legacy names)
        and create those ``specs`` need; no parameters."""
        statements = [f"DROP TRIGGER IF EXISTS {name}" for feed in FEEDS
                      for name in (feed.trigger, feed.legacy_trigger)]
        for feed in FEEDS:
            body = "".join(self._enqueue(feed, spec) for spec in specs)
            if body:
                statements.append(f"CREATE TRIGGER {feed.trigger} {self._event(feed)}\nBEGIN\n{body}END")
        return statements

    @staticmethod
    def _event(feed: Feed) -> str:
        if feed.event == "insert":
            return f"AFTER INSERT ON {feed.table}"
        if not feed.changed:
            return f"AFTER UPDATE ON {feed.table}"
        changed = " OR ".join(f"old.{c} IS NOT new.{c}" for c in feed.changed)
        return f"AFTER UPDATE OF {', '.join(feed.changed)} ON {feed.table} WHEN {changed}"

    @staticmethod
    def _enqueue(feed: Feed, spec: StoredTarget) -> str:
        """The statements that queue the feed's row for one target, and keep it within its bound."""
        q = queue_table(spec.id)
        out = ""
        for kind, (k1, k2) in feed.keys.items():
            if kind not in spec.kinds:
                continue
            out += (f"INSERT INTO {q} (kind, k1, k2, t) VALUES ({KIND_CODES[kind]}, new.{k1}, "
                    f"{f'new.{k2}' if k2 else '0'}, unixepoch());\n")
            over = f"EXISTS (SELECT 1 FROM {q} WHERE id = last_insert_rowid() - {int(spec.max_queue)})"
            if spec.when_full == "block":
                out += f"SELECT RAISE(ABORT, {_quote(f'export queue full: {spec.name}')}) WHERE {over};\n"
            else:
                out += (f"UPDATE export_targets SET dropped = dropped + 1 WHERE id = {int(spec.id)} AND {over};\n"
                        f"DELETE FROM {q} WHERE id = last_insert_rowid() - {int(spec.max_queue)};\n")
        return out

    triggers_present = ("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                        f"AND substr(name, 1, {len(LEGACY_TRIGGER_PREFIX)}) = {_quote(LEGACY_TRIGGER_PREFIX)}")
    """Names of the plugin's triggers that exist, under their names and their legacy ones (no parameters)."""
    queues_present = ("SELECT name FROM sqlite_master WHERE type = 'table' "
                      f"AND substr(name, 1, {len(QUEUE_PREFIX)}) = {_quote(QUEUE_PREFIX)}")
    """Names of the queue tables that exist (no parameters)."""

    # the queue -------------------------------------------------------------------

    def entries(self, target_id: int) -> str:
        """The oldest entries after an id, as one row: their first and last id
        (``lo``, ``hi``), how many (``n``) and their kind codes (``kinds``, comma-separated):
        (after, limit). Without gaps (the usual case) the ids are lo..hi and no
        entry needs to be read one by one."""
        return (f"SELECT min(id) AS lo, max(id) AS hi, count(*) AS n, group_concat(DISTINCT kind) AS kinds "
                f"FROM (SELECT id, kind FROM {queue_table(target_id)} WHERE id > ? ORDER BY id LIMIT ?)")

    def entry_ids(self, target_id: int) -> str:
        """The ids of the entries in a range, in order: (lo, hi)."""
        return f"SELECT id FROM {queue_table(target_id)} WHERE id BETWEEN ? AND ? ORDER BY id"

    def entry_rows(self, target_id: int, kind: str) -> str:
        """The stored rows of a kind's entries in an id range, with ``qid``: (lo, hi, kind code)."""
        source = SOURCES[kind]
        return (f"SELECT q.id AS qid, {_source_columns(source)} FROM {queue_table(target_id)} q "
                f"{_source_join(kind, source)} WHERE q.id BETWEEN ? AND ? AND q.kind = ? ORDER BY q.id")

    def remove_entries(self, target_id: int) -> str:
        """Delete a run of consecutive entries: (first, last)."""
        return f"DELETE FROM {queue_table(target_id)} WHERE id BETWEEN ? AND ?"

    def enqueue(self, target_id: int) -> str:
        """Queue one entry now: (kind code, k1, k2)."""
        return f"INSERT INTO {queue_table(target_id)} (kind, k1, k2, t) VALUES (?, ?, ?, unixepoch())"

    def span(self, target_id: int) -> str:
        """The oldest and newest entry ids, and when the oldest was queued (each
        one probe of the primary key: min and max together would scan the queue)."""
        q = queue_table(target_id)
        return (f"SELECT (SELECT min(id) FROM {q}) AS lo, (SELECT max(id) FROM {q}) AS hi, "
                f"(SELECT t FROM {q} ORDER BY id LIMIT 1) AS oldest_t")

    # counters and dead letters ---------------------------------------------------

    sent = "UPDATE export_targets SET sent = sent + ?, last_sent_at = ? WHERE id = ?"
    dead_letter = "INSERT INTO export_dead (target, t, status, message, points, lines) VALUES (?, ?, ?, ?, ?, ?)"
    refused = "UPDATE export_targets SET dead = dead + ?, last_error = ?, last_error_at = ? WHERE id = ?"
    failed = "UPDATE export_targets SET retries = retries + ?, last_error = ?, last_error_at = ? WHERE name = ?"
    mark_resend = "UPDATE export_dead SET resend = 1 WHERE id = ?"
    resend_next = ("SELECT d.id, d.points, d.lines FROM export_dead d JOIN export_targets t ON t.id = d.target "
                   "WHERE t.name = ? AND d.resend = 1 ORDER BY d.id LIMIT 1")
    resent_sent = ("UPDATE export_targets SET sent = sent + (SELECT points FROM export_dead WHERE id = ?), "
                   "last_sent_at = ? WHERE id = ?")
    resent_gone = "DELETE FROM export_dead WHERE id = ?"
    resent_refused = "UPDATE export_dead SET resend = 0, t = ?, status = ?, message = ? WHERE id = ?"
    last_error = "UPDATE export_targets SET last_error = ?, last_error_at = ? WHERE id = ?"
    dead_count = "SELECT count(*) AS n FROM export_dead WHERE target = ?"

    def resend_candidates(self, by_target: bool, ids: int | None) -> str:
        """Dead letters not yet marked: (target id, if by_target; then the ``ids`` ids, if given)."""
        where = ["d.resend = 0"]
        if by_target:
            where.append("d.target = ?")
        if ids is not None:
            where.append(f"d.id IN ({', '.join('?' * ids)})" if ids else "0")
        return f"SELECT d.id FROM export_dead d WHERE {' AND '.join(where)}"

    def state(self, by_name: bool) -> str:
        """Targets with their counters: (name, if by_name)."""
        return f"SELECT * FROM export_targets {'WHERE name = ?' if by_name else ''} ORDER BY name"

    def dead_letters(self, by_name: bool) -> str:
        """Dead letters, newest first: (name, if by_name; limit)."""
        where = "WHERE t.name = ?" if by_name else ""
        return (f"SELECT d.id, t.name AS target, d.t, d.status, d.message, d.points, d.lines, d.resend "
                f"FROM export_dead d JOIN export_targets t ON t.id = d.target {where} ORDER BY d.id DESC LIMIT ?")

    # back-fill -------------------------------------------------------------------

    def backfill_keys(self, kind: str, after: bool, times: int | None) -> str:
        """Keys (k1, k2) of stored points of a kind in key order: (t0, t1; k1[, k2] if after;
        the ``times`` times, if given; limit)."""
        return f"{self._keys(kind, after, times)} LIMIT ?"

    def backfill_count(self, kind: str, times: int | None) -> str:
        """How many keys ``backfill_keys`` finds over the range: (t0, t1; times...)."""
        return f"SELECT count(*) AS n FROM ({self._keys(kind, False, times)})"

    @staticmethod
    def _keys(kind: str, after: bool, times: int | None) -> str:
        source = SOURCES[kind]
        t, k1, k2 = _time(source), source.k1, source.k2
        where = [f"{t} >= ?", f"{t} < ?"]
        if after:
            where.append(f"{k1} > ?" if k2 is None else f"({k1}, {k2}) > (?, ?)")
        if times is not None:
            where.append(f"{t} IN ({', '.join('?' * times)})")
        order = k1 if k2 is None else f"{k1}, {k2}"
        return (f"SELECT DISTINCT {k1} AS k1, {k2 or '0'} AS k2 FROM {source.table} "
                f"WHERE {' AND '.join(where)} ORDER BY {order}")
