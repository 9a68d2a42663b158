"""Findings of the detectors with their lifecycle (open, acknowledged, resolved,
false alarm) and the operators' feedback; one finding per problem however
often it is reported (the rules are ``core.findings``). Alarms are appended
to their journal (``journal_append("alarms", ...)``).

A core repository: every backend implements it (``Storage`` composes it).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from balans_edge.core.findings import SUPPRESS_S
from balans_edge.core.storage.journal_repository import JournalReader, JournalRepository


class FindingReader(JournalReader):
    """Reads of detectors' findings."""

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


class FindingRepository(JournalRepository, FindingReader):
    """Detectors' findings, deduplicated, with their lifecycle."""

    @abstractmethod
    async def record_finding(self, record: dict[str, Any], suppress_s: int = SUPPRESS_S) -> tuple[int, bool]:
        """Store a detector's finding once per problem; return (id, new).

        An open or acknowledged finding with the same detector, subject and kind
        is updated (last_seen, seen, message, severity, data) instead of being
        added again, so detectors may report on every run. A resolved one that
        recurs is a new finding. A false alarm marked within ``suppress_s``
        seconds suppresses the report: (its id, False)."""

    @abstractmethod
    async def set_finding_status(
        self, finding_id: int, status: str, by: str, note: str = "", t: int | None = None
    ) -> dict[str, Any] | None:
        """Move a finding through its lifecycle and keep the operator's answer;
        None if there is no such finding, ValueError on a change the lifecycle
        (balans_edge.core.findings) does not allow."""
