"""The append-only journals: ``commands`` (the audit of everything that moves or
reconfigures a device), ``findings`` and ``alarms``. A record gets its id
when appended and is durable when the call returns; a command's outcome is
filled in once known.

A core repository, the base of ``CommandRepository`` and
``FindingRepository`` (every backend implements it once).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class JournalReader(ABC):
    """Reads of the journals of commands, findings and alarms."""

    @abstractmethod
    async def journal_list(self, kind: str, limit: int = 100) -> list[dict[str, Any]]:
        """The newest records of a journal, newest first."""

    @abstractmethod
    async def journal_get(self, kind: str, record_id: int) -> dict[str, Any] | None:
        """One journal record, or None."""


class JournalRepository(JournalReader):
    """Journals of commands, findings and alarms, addressed by kind."""

    @abstractmethod
    async def journal_append(self, kind: str, record: dict[str, Any]) -> int:
        """Append a record to the ``commands``, ``findings`` or ``alarms``
        journal durably; return its id."""

    @abstractmethod
    async def journal_update(self, kind: str, record_id: int, changes: dict[str, Any]) -> None:
        """Change fields of a journal record (a command's outcome once known)."""
