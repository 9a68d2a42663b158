"""The export plugin's durable state: what each target takes, its bounded queue
(filled in the transaction that stores the data), acknowledgements, dead
letters and back-fill.

Its tables (``export_targets``, ``export_dead``; migrations in
``migrations/<dialect>/``), the queue tables ``export_queue_<id>`` and the
``export__*`` triggers it generates from the configuration are the plugin's
(owner ``export``). It reaches them through the storage's SQL gateway
(``core.storage.gateway.SqlGateway``: the server gives it as
``context.database``; a command gives the storage object, which is one), with
every statement of a dialect in one module (``sql_sqlite``) and the logic here,
so a PostgreSQL dialect is one more module. Nothing in a signature is of a
dialect.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from balans_edge.core.storage.errors import StorageError
from balans_edge.core.storage.gateway import SqlGateway, Write
from balans_edge.plugins.export.feeds import EXPORT_KINDS, EXPORT_POLICIES, FEEDS, KIND_CODES, SOURCES
from balans_edge.plugins.export.records import ExportBatch, ExportTarget, StoredTarget, queue_table
from balans_edge.plugins.export.sql_sqlite import SqliteQueueSql

DIALECTS = {"sqlite": SqliteQueueSql}
"""The SQL of each dialect the plugin speaks."""


def _check(target: ExportTarget) -> None:
    unknown = sorted(set(target.kinds) - set(EXPORT_KINDS))
    if unknown:
        raise ValueError(f"export target {target.name}: unknown kind {unknown[0]!r}")
    if target.when_full not in EXPORT_POLICIES:
        raise ValueError(f"export target {target.name}: unknown policy {target.when_full!r}")
    if target.max_queue < 1:
        raise ValueError(f"export target {target.name}: max_queue must be at least 1")


def _runs(ids: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted ids as (first, last) runs of consecutive ids: one range delete per run
    instead of one statement per entry (a batch is usually a single run)."""
    out: list[tuple[int, int]] = []
    for i in sorted(ids):
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


_INSERT_FEEDS = {kind: (feed.trigger, feed.legacy_trigger) for feed in FEEDS if feed.event == "insert"
                 for kind in feed.keys}
"""The trigger that queues new points of each kind (under its name, or the name a
database of an earlier release gave it until the plugin configures its targets)."""


class ExportRepository:
    """Export targets and their queues, on the storage's SQL gateway."""

    def __init__(self, database: SqlGateway) -> None:
        sql = DIALECTS.get(database.dialect)
        if sql is None:
            raise StorageError(f"the export plugin has no SQL for {database.dialect}")
        self.db = database
        self.sql = sql()

    # helpers ----------------------------------------------------------------------

    async def _rows(self) -> list[StoredTarget]:
        rows = await self.db.sql_read(self.sql.targets)
        return [StoredTarget(r["id"], r["name"], tuple(k for k in r["kinds"].split(",") if k), r["max_queue"],
                          r["when_full"]) for r in rows]

    async def _id(self, target: str) -> int:
        rows = await self.db.sql_read(self.sql.target_id, (target,))
        if not rows:
            raise StorageError(f"no export target {target!r} (start the server with it configured first)")
        return rows[0]["id"]

    async def _names(self, sql: str) -> set[str]:
        return {r["name"] for r in await self.db.sql_read(sql)}

    # configuration ----------------------------------------------------------------

    async def configure(self, targets: Sequence[ExportTarget]) -> None:
        """Make exactly ``targets`` collect points, in one transaction: each gets a
        durable queue (kept across restarts) that every later write of an
        exported kind appends to in its own transaction, bounded by ``max_queue``
        with its ``when_full`` policy. Targets not listed stop collecting; their
        queues are kept until ``remove``. With no target, nothing is queued."""
        for target in targets:
            _check(target)
        existing = {r.name: r for r in await self._rows()}
        next_id = max((r.id for r in existing.values()), default=0) + 1
        wanted: list[StoredTarget] = []
        for target in targets:
            row_id = existing[target.name].id if target.name in existing else next_id
            next_id += target.name not in existing
            wanted.append(StoredTarget(row_id, target.name, tuple(target.kinds), target.max_queue, target.when_full))
        names = {r.name for r in wanted}
        statements: list[Write] = [
            (self.sql.upsert_target, [(r.id, r.name, ",".join(r.kinds), r.max_queue, r.when_full) for r in wanted]),
        ]
        stale = [(name,) for name in existing if name not in names]
        if stale:
            statements.append((self.sql.stop_collecting, stale))
        for r in wanted:
            statements.append((self.sql.create_queue(r.id), [()]))
            if r.when_full == "drop_oldest":
                # A smaller bound than before: drop the excess now, as a full queue would.
                count, delete = self.sql.trim_queue(r.id)
                statements += [(count, [(r.max_queue, r.id)]), (delete, [(r.max_queue,)])]
        statements += [(sql, [()]) for sql in self.sql.triggers(wanted)]
        await self.db.sql_write(statements)

    async def remove(self, target: str) -> int:
        """Stop collecting for a target and delete it with its queue and dead
        letters; return how many queued points were discarded."""
        target_id = await self._id(target)
        depth = (await self.state(target))[0]["depth"]
        collecting = {r["name"]: tuple(r["kinds"]) for r in await self.state()}
        # The others keep collecting what they collect now (nothing, when core dropped the triggers).
        keep = [StoredTarget(r.id, r.name, collecting[r.name], r.max_queue, r.when_full) for r in await self._rows()
                if r.name != target and collecting[r.name]]
        statements: list[Write] = [(sql, [()]) for sql in self.sql.triggers(keep)]
        statements += [
            (self.sql.drop_queue(target_id), [()]),
            (self.sql.delete_dead_of, [(target_id,)]),
            (self.sql.delete_target, [(target_id,)]),
        ]
        await self.db.sql_write(statements)
        return depth

    # the queue --------------------------------------------------------------------

    async def take(self, target: str, limit: int, after: int = 0) -> ExportBatch:
        """The oldest ``limit`` entries of a target's queue (those after entry id
        ``after``: the sender reads the next batch while one is on the wire) with
        their source rows; entries stay queued until acknowledged or dead-lettered."""
        target_id = await self._id(target)
        (span,) = await self.db.sql_read(self.sql.entries(target_id), (after, limit))
        if not span["n"]:
            return ExportBatch([], {})
        lo, hi = span["lo"], span["hi"]
        if hi - lo + 1 == span["n"]:
            ids = list(range(lo, hi + 1))
        else:  # gaps (entries acknowledged out of order, or dropped from a full queue)
            ids = [r["id"] for r in await self.db.sql_read(self.sql.entry_ids(target_id), (lo, hi))]
        present = {int(k) for k in str(span["kinds"]).split(",")}
        rows: dict[str, list[dict[str, Any]]] = {}
        for kind, code in KIND_CODES.items():
            if code in present:
                rows[kind] = await self.db.sql_read(self.sql.entry_rows(target_id, kind), (lo, hi, code))
        return ExportBatch(ids, rows)

    async def ack(self, target: str, ids: Sequence[int], sent: int) -> None:
        """Remove queue entries the target accepted (or that had nothing to send)
        and count ``sent`` points as sent, in one transaction."""
        target_id = await self._id(target)
        await self.db.sql_write([
            (self.sql.remove_entries(target_id), _runs(ids)),
            (self.sql.sent, [(sent, int(time.time()), target_id)]),
        ])

    async def dead_letter(self, target: str, ids: Sequence[int], status: int, message: str, lines: str,
                          points: int) -> None:
        """Move entries the target refused for good to the dead letters, with the
        refused lines and the target's answer, in one transaction."""
        target_id = await self._id(target)
        now = int(time.time())
        await self.db.sql_write([
            (self.sql.dead_letter, [(target_id, now, status, message, points, lines)]),
            (self.sql.remove_entries(target_id), _runs(ids)),
            (self.sql.refused, [(points, f"HTTP {status}: {message}", now, target_id)]),
        ])

    async def note_failure(self, target: str, error: str, retries: int = 1) -> None:
        """Record a failed attempt (the error, and how many requests will be repeated)."""
        await self.db.sql_write([(self.sql.failed, [(retries, error, int(time.time()), target)])])

    # dead letters -----------------------------------------------------------------

    async def resend(self, target: str | None = None, ids: Sequence[int] | None = None) -> int:
        """Mark dead letters (of one target or all; only ``ids`` when given) to be
        sent again by their target's exporter; return how many were marked."""
        args: list[Any] = [] if target is None else [await self._id(target)]
        args += list(ids or ())
        sql = self.sql.resend_candidates(target is not None, None if ids is None else len(ids))
        chosen = [r["id"] for r in await self.db.sql_read(sql, args)]
        if chosen:
            await self.db.sql_write([(self.sql.mark_resend, [(i,) for i in chosen])])
        return len(chosen)

    async def resend_next(self, target: str) -> dict[str, Any] | None:
        """The oldest dead letter of ``target`` marked to be sent again (``id``,
        ``points``, ``lines``), or None."""
        rows = await self.db.sql_read(self.sql.resend_next, (target,))
        return rows[0] if rows else None

    async def resent(self, target: str, dead_id: int, status: int, message: str) -> None:
        """The target's answer to a dead letter sent again: accepted (2xx), it leaves
        the dead letters and its points count as sent; refused, it stays with the
        new answer and is no longer marked."""
        target_id = await self._id(target)
        now = int(time.time())
        if 200 <= status < 300:
            await self.db.sql_write([
                (self.sql.resent_sent, [(dead_id, now, target_id)]),
                (self.sql.resent_gone, [(dead_id,)]),
            ])
        else:
            await self.db.sql_write([
                (self.sql.resent_refused, [(now, status, message, dead_id)]),
                (self.sql.last_error, [(f"HTTP {status}: {message}", now, target_id)]),
            ])

    async def dead_letters(self, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Dead letters (of one target or all), newest first."""
        args = (target, limit) if target is not None else (limit,)
        rows = await self.db.sql_read(self.sql.dead_letters(target is not None), args)
        return [{**r, "resend": bool(r["resend"])} for r in rows]

    # state ------------------------------------------------------------------------

    async def state(self, target: str | None = None) -> list[dict[str, Any]]:
        """Targets (one or all) with their lifetime counters, their queue's ``depth``
        and ``oldest_t`` (when its oldest entry was queued), and the ``kinds``
        queued for them now: those configured, as long as their triggers exist
        (core drops them at a start at which the plugin does not run)."""
        args = (target,) if target is not None else ()
        rows = await self.db.sql_read(self.sql.state(target is not None), args)
        if not rows:
            return []
        tables = await self._names(self.sql.queues_present)
        triggers = await self._names(self.sql.triggers_present)
        for row in rows:
            collecting = [k for k in row["kinds"].split(",") if k and not triggers.isdisjoint(_INSERT_FEEDS[k])]
            present = queue_table(row["id"]) in tables
            span = (await self.db.sql_read(self.sql.span(row["id"])))[0] if present else {"lo": None}
            row["kinds"] = collecting
            row["depth"] = 0 if span["lo"] is None else span["hi"] - span["lo"] + 1
            row["oldest_t"] = None if span["lo"] is None else span["oldest_t"]
            row["dead_letters"] = (await self.db.sql_read(self.sql.dead_count, (row["id"],)))[0]["n"]
        return rows

    # back-fill --------------------------------------------------------------------

    async def backfill(self, target: str, kind: str, t0: int, t1: int, after: tuple[Any, Any] | None, limit: int,
                       times: Sequence[int] | None = None) -> tuple[int, tuple[Any, Any] | None]:
        """Queue up to ``limit`` stored points of ``kind`` with t0 <= time < t1 whose
        key comes after ``after`` (keys in storage order), for back-filling history;
        with ``times``, only those at these times. Return how many were queued and
        the last key (None when nothing is left)."""
        if kind not in SOURCES:
            raise ValueError(f"unknown export kind {kind!r}")
        target_id = await self._id(target)
        args: list[Any] = [t0, t1]
        if after is not None:
            args += [after[0]] if SOURCES[kind].k2 is None else list(after)
        args += [*(times or ()), limit]
        sql = self.sql.backfill_keys(kind, after is not None, None if times is None else len(times))
        keys = [(r["k1"], r["k2"]) for r in await self.db.sql_read(sql, args)]
        if not keys:
            return 0, None
        await self.db.sql_write([(self.sql.enqueue(target_id), [(KIND_CODES[kind], k1, k2) for k1, k2 in keys])])
        return len(keys), keys[-1]

    async def backfill_count(self, kind: str, t0: int, t1: int, times: Sequence[int] | None = None) -> int:
        """How many points ``backfill`` would queue over the whole range."""
        sql = self.sql.backfill_count(kind, None if times is None else len(times))
        return (await self.db.sql_read(sql, (t0, t1, *(times or ()))))[0]["n"]
