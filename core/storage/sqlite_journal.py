"""SQLite storage of the journals (commands, findings, alarms), the command audit
and the findings' lifecycle.

A part of ``SqliteStorage`` (a mixin): it uses the storage's reader (``_all``,
``_scalar``), its group-committing writer (``_submit``) and ``flush``. Journal
ids are allocated here, under the single writer, so an append returns its id
without a second round trip after the group commit."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from balans_edge.core import findings as findings_rules
from balans_edge.core.storage.commands_repository import CommandRepository
from balans_edge.core.storage.findings_repository import FindingRepository

JOURNALS = {
    "commands": ("t", "target", "code", "requested_by", "reason", "outcome", "detail"),
    "findings": ("t", "detector", "subject", "kind", "severity", "message", "data"),
    "alarms": ("t", "source", "severity", "message", "data"),
}
FINDING_COLUMNS = (*JOURNALS["findings"], "status", "group_id", "first_seen", "last_seen", "seen", "feedback",
                   "started", "ended", "rate", "volume")
"""What a finding row holds since its lifecycle (migration 0007) and its event (0015) were added."""


def writable(kind: str) -> str:
    """``kind`` if the generic journal methods may write it: the ``commands``
    journal is written only through ``command_append`` and ``command_update``,
    which only the actuation service calls, so no plugin can put a command on
    record that was not routed and observed like the others."""
    if kind == "commands":
        raise ValueError("the commands journal is written by the actuation service only (core.actuation)")
    return kind


def _finding_lifecycle(record: dict[str, Any]) -> dict[str, Any]:
    """The lifecycle columns of a finding appended as a new one: open, seen once,
    now; its event as the report describes it."""
    event = findings_rules.event_of({**record, "t": record.get("t") or int(time.time())})
    return {
        "status": record.get("status") or findings_rules.OPEN,
        "group_id": record.get("group_id") or findings_rules.group_of(record.get("data")),
        "first_seen": record.get("first_seen") or record.get("t"),
        "last_seen": record.get("last_seen") or record.get("t"),
        "seen": record.get("seen") or 1,
        "feedback": json.dumps(record.get("feedback") or [], ensure_ascii=False),
        "started": event.start,
        "ended": event.end,
        "rate": event.rate,
        "volume": event.volume,
    }


def _finding_out(row: Any) -> dict[str, Any]:
    """A stored finding as callers use it: data and feedback decoded."""
    out = dict(row)
    out["data"] = json.loads(out["data"] or "{}")
    out["feedback"] = json.loads(out["feedback"] or "[]")
    return out


class JournalTables(FindingRepository, CommandRepository):
    _all: Callable[..., Awaitable[list[Any]]]
    _scalar: Callable[..., Awaitable[Any]]
    _submit: Callable[..., Awaitable[None]]
    _journal_ids: dict[str, int]
    _journal_lock: asyncio.Lock
    flush: Callable[[], Awaitable[None]]

    # journals -------------------------------------------------------------

    async def journal_append(self, kind: str, record: dict[str, Any]) -> int:
        return await self._append(writable(kind), record)

    async def journal_update(self, kind: str, record_id: int, changes: dict[str, Any]) -> None:
        await self._update(writable(kind), record_id, changes)

    async def command_append(self, record: dict[str, Any]) -> int:
        return await self._append("commands", record)

    async def command_update(self, record_id: int, changes: dict[str, Any]) -> None:
        await self._update("commands", record_id, changes)

    async def _append(self, kind: str, record: dict[str, Any]) -> int:
        columns = FINDING_COLUMNS if kind == "findings" else JOURNALS[kind]
        row = {c: record.get(c) for c in columns}
        if "data" in row:
            row["data"] = json.dumps(row["data"] or {}, sort_keys=True, default=str)
        if kind == "findings":
            row.update(_finding_lifecycle(record))
        # The id is allocated here (under the single writer) so the caller
        # learns it without a second round trip after the group commit.
        async with self._journal_lock:
            if kind not in self._journal_ids:
                self._journal_ids[kind] = await self._max_id(kind)
            self._journal_ids[kind] += 1
            row_id = self._journal_ids[kind]
        sql = f"INSERT INTO {kind} (id, {', '.join(columns)}) VALUES (?, {', '.join('?' * len(columns))})"
        await self._submit([(sql, [(row_id, *row.values())])])
        return row_id

    async def _update(self, kind: str, record_id: int, changes: dict[str, Any]) -> None:
        columns = [c for c in changes if c in JOURNALS[kind]]
        if len(columns) != len(changes):
            raise ValueError(f"{kind}: unknown columns {sorted(set(changes) - set(columns))}")
        sets = ", ".join(f"{c} = ?" for c in columns)
        await self._submit([(f"UPDATE {kind} SET {sets} WHERE id = ?", [(*changes.values(), record_id)])])

    async def _max_id(self, kind: str) -> int:
        await self.flush()
        return await self._scalar(f"SELECT coalesce(max(id), 0) FROM {kind}")

    async def journal_list(self, kind: str, limit: int = 100) -> list[dict[str, Any]]:
        JOURNALS[kind]
        rows = await self._all(f"SELECT * FROM {kind} ORDER BY id DESC LIMIT ?", (limit,))
        out = [dict(r) for r in rows]
        for r in out:
            if "data" in r:
                r["data"] = json.loads(r["data"])
        return out

    async def journal_get(self, kind: str, record_id: int) -> dict[str, Any] | None:
        JOURNALS[kind]
        rows = await self._all(f"SELECT * FROM {kind} WHERE id = ?", (record_id,))
        if not rows:
            return None
        row = dict(rows[0])
        if "data" in row:
            row["data"] = json.loads(row["data"])
        return row

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
        where, args = ["1"], []
        for condition, value in (("target = ?", target), ("outcome = ?", outcome), ("code = ?", code),
                                 ("requested_by = ?", requested_by), ("t >= ?", t0), ("t < ?", t1)):
            if value is not None:
                where.append(condition)
                args.append(value)
        rows = await self._all(f"SELECT * FROM commands WHERE {' AND '.join(where)} ORDER BY id DESC LIMIT ?",
                               (*args, limit))
        return [dict(r) for r in rows]

    async def settle_pending_commands(self, note: str) -> list[dict[str, Any]]:
        pending = [r[0] for r in await self._all("SELECT id FROM commands WHERE outcome = 'pending'")]
        if not pending:
            return []
        await self._submit([(
            "UPDATE commands SET outcome = 'failed', detail = CASE WHEN detail = '' THEN ? ELSE detail || '; ' || ? "
            "END WHERE id = ? AND outcome = 'pending'", [(note, note, i) for i in pending])])
        marks = ", ".join("?" * len(pending))
        return [dict(r) for r in await self._all(f"SELECT * FROM commands WHERE id IN ({marks}) ORDER BY id", pending)]

    # findings ---------------------------------------------------------------

    def _findings_lock(self) -> asyncio.Lock:
        """Serialises look-up-then-write of findings, so two reports of one
        problem racing each other cannot both add a row."""
        lock = self.__dict__.get("_findings_mutex")
        if lock is None:
            lock = self.__dict__["_findings_mutex"] = asyncio.Lock()
        return lock

    async def record_finding(
        self, record: dict[str, Any], suppress_s: int = findings_rules.SUPPRESS_S,
        gap_s: int = findings_rules.EVENT_GAP_S,
    ) -> tuple[int, bool]:
        t = int(record.get("t") or time.time())
        record = {**record, "t": t}
        event = findings_rules.event_of(record)
        key = (record["detector"], record["subject"], record["kind"])
        async with self._findings_lock():
            rows = await self._all(
                "SELECT id, status, started, ended, volume FROM findings "
                "WHERE detector = ? AND subject = ? AND kind = ? ORDER BY id DESC LIMIT 1", key)
            what = "new" if not rows else findings_rules.match(rows[0]["status"], rows[0]["started"],
                                                                rows[0]["ended"], event, suppress_s, gap_s)
            if what == "update":
                await self._seen_again(rows[0]["id"], record, t, event,
                                       findings_rules.fuller(rows[0]["volume"], event))
            if what != "new":
                return rows[0]["id"], False
            return await self.journal_append("findings", {**record, "first_seen": t, "last_seen": t}), True

    async def _active_finding(self, key: tuple[str, str, str]) -> int | None:
        return await self._scalar(
            "SELECT id FROM findings WHERE detector = ? AND subject = ? AND kind = ? "
            "AND status IN ('open', 'acknowledged') ORDER BY id DESC LIMIT 1", key)

    async def _seen_again(self, finding_id: int, record: dict[str, Any], t: int, event: findings_rules.Event,
                          fuller: bool) -> None:
        """Another run reported the event of an active finding: its start is the
        earliest and its end the latest seen; a report that saw at least as much of
        it (``findings.fuller``) brings the estimate (message, severity, data, rate,
        volume)."""
        sets = ("last_seen = max(coalesce(last_seen, t), ?), seen = seen + 1, started = min(coalesce(started, ?), ?), "
                "ended = max(coalesce(ended, ?), ?)")
        args: tuple[Any, ...] = (t, event.start, event.start, event.end, event.end)
        if fuller:
            data = record.get("data") or {}
            sets += (", message = ?, severity = ?, data = ?, group_id = coalesce(?, group_id), "
                     "rate = coalesce(?, rate), volume = coalesce(?, volume)")
            args += (record["message"], str(record["severity"]), json.dumps(data, sort_keys=True, default=str),
                     record.get("group_id") or findings_rules.group_of(data), event.rate, event.volume)
        await self._submit([(f"UPDATE findings SET {sets} WHERE id = ?", [(*args, finding_id)])])

    async def findings(
        self,
        group: str | None = None,
        kind: str | None = None,
        status: str | None = None,
        subject: str | None = None,
        limit: int = 100,
        since: int | None = None,
    ) -> list[dict[str, Any]]:
        filters = {"group_id = ?": group, "kind = ?": kind, "status = ?": status, "subject = ?": subject,
                   "coalesce(first_seen, t) >= ?": since}
        used = {c: v for c, v in filters.items() if v is not None}
        where = " AND ".join(used) or "1"
        rows = await self._all(
            f"SELECT * FROM findings WHERE {where} ORDER BY coalesce(last_seen, t) DESC, id DESC LIMIT ?",
            (*used.values(), limit))
        return [_finding_out(r) for r in rows]

    async def finding(self, finding_id: int) -> dict[str, Any] | None:
        rows = await self._all("SELECT * FROM findings WHERE id = ?", (finding_id,))
        return _finding_out(rows[0]) if rows else None

    async def set_finding_status(
        self, finding_id: int, status: str, by: str, note: str = "", t: int | None = None
    ) -> dict[str, Any] | None:
        findings_rules.check_status(status)
        async with self._findings_lock():
            current = await self.finding(finding_id)
            if current is None:
                return None
            findings_rules.check_transition(current["status"], status)
            if status in findings_rules.ACTIVE and current["status"] not in findings_rules.ACTIVE:
                await self._refuse_second_active(current)
            feedback = [*current["feedback"], findings_rules.feedback_entry(status, by, note, t)]
            await self._submit([("UPDATE findings SET status = ?, feedback = ? WHERE id = ?",
                                 [(status, json.dumps(feedback, ensure_ascii=False), finding_id)])])
        return await self.finding(finding_id)

    async def _refuse_second_active(self, current: dict[str, Any]) -> None:
        """Reopening must not leave two active findings of one problem (the newer already tracks it)."""
        other = await self._active_finding((current["detector"], current["subject"], current["kind"]))
        if other is not None:
            raise findings_rules.TransitionError(f"finding {other} already tracks this problem: reopen is refused")
