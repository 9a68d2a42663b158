"""SQLite storage of polled tag samples (PLC values read over Modbus or OPC UA).

A part of ``SqliteStorage`` (a mixin): it uses the storage's reader (``_all``)
and its group-committing writer (``_submit``), so the samples of many devices
polled at the same moment share one transaction and one fsync."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from balans_edge.core.storage.tags_repository import TAG_QUALITIES, TagRepository, TagRow


class TagTable(TagRepository):
    _all: Callable[..., Awaitable[list[Any]]]
    _submit: Callable[..., Awaitable[None]]

    async def store_tag_values(self, samples: Sequence[TagRow]) -> None:
        if not samples:
            return
        bad = sorted({s.quality for s in samples} - TAG_QUALITIES)
        if bad:
            raise ValueError(f"unknown tag quality {bad[0]!r} (known: {', '.join(sorted(TAG_QUALITIES))})")
        await self._submit(
            [
                (
                    "INSERT OR REPLACE INTO tag_values (tag, ts, value, quality) VALUES (?, ?, ?, ?)",
                    [(s.tag, s.ts, s.value if s.quality == "good" else None, s.quality) for s in samples],
                )
            ]
        )

    async def tag_values(self, tag: str, t0: int, t1: int, limit: int = 10000) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT tag, ts, value, quality FROM tag_values WHERE tag = ? AND ts >= ? AND ts < ? ORDER BY ts LIMIT ?",
            (tag, t0, t1, limit),
        )
        return [dict(r) for r in rows]

    async def latest_tag_values(self) -> list[dict[str, Any]]:
        rows = await self._all(
            "SELECT v.tag, v.ts, v.value, v.quality, g.value AS last_good_value, g.ts AS last_good_ts "
            "FROM (SELECT tag, max(ts) AS ts FROM tag_values GROUP BY tag) n "
            "JOIN tag_values v ON v.tag = n.tag AND v.ts = n.ts "
            "LEFT JOIN (SELECT tag, max(ts) AS ts FROM tag_values WHERE quality = 'good' GROUP BY tag) lg "
            "ON lg.tag = v.tag "
            "LEFT JOIN tag_values g ON g.tag = lg.tag AND g.ts = lg.ts ORDER BY v.tag"
        )
        return [dict(r) for r in rows]
