"""The command audit: queries of the ``commands`` journal and the settling of
commands a stopped process left pending.

A core repository: every backend implements it (``Storage`` composes it).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from balans_edge.core.storage.journal_repository import JournalReader, JournalRepository


class CommandReader(JournalReader):
    """Reads of the command audit."""

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


class CommandRepository(JournalRepository, CommandReader):
    """Commands to devices, as journaled: their records, filtered queries and recovery after a stop."""

    @abstractmethod
    async def command_append(self, record: dict[str, Any]) -> int:
        """Append a record to the ``commands`` journal durably; return its id.
        Only the actuation service calls this (and ``command_update``), so that
        every command is routed, audited and observed the same way; the generic
        ``journal_append``/``journal_update`` refuse ``commands`` (ValueError)."""

    @abstractmethod
    async def command_update(self, record_id: int, changes: dict[str, Any]) -> None:
        """Change fields of a ``commands`` record (its outcome once known)."""

    @abstractmethod
    async def settle_pending_commands(self, note: str) -> list[dict[str, Any]]:
        """Commands still ``pending`` (their outcome was never recorded: the process
        stopped while they ran) become ``failed`` with ``note`` added to their
        detail, in one transaction; return them as they are now."""
