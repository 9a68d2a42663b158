"""The seam a plugin's own repository is written against: SQL on the plugin's own tables.

Core's tables are reached only through the repositories (``Storage``); a
plugin's tables, which core knows nothing about, are reached through this
gateway by the plugin's own repository class, which keeps its SQL in one
place, per dialect, like core's backends do. Writes join the backend's
transactions (on SQLite: its group commit, one fsync for many writers), reads
see committed state. A plugin's SQL touches its own tables only (those its
``register_migrations`` creates); core's tables change meaning between
versions, and only the repositories keep that promise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

Write = tuple[str, Sequence[Sequence[Any]]]
"""One statement and the rows of parameters it runs with (once per row)."""


class SqlGateway(ABC):
    """SQL for plugins' repositories, in the backend's dialect and parameter style."""

    dialect: str
    """``sqlite`` (``?`` parameters) or, with that backend, ``postgresql``: which
    of the plugin's SQL to run, as its migration folders are chosen."""

    @abstractmethod
    async def sql_write(self, statements: Sequence[Write]) -> None:
        """Run statements that change rows (no SELECT), each once per row of its
        parameters, in one transaction, durably; StorageError when refused
        (nothing of it is written).

        A statement given one empty row of parameters (``[()]``) runs once as it
        is, whatever it turns out to change: so the transaction may also create,
        alter or drop schema objects of the plugin's own that it generates at run
        time (``CREATE TABLE IF NOT EXISTS``, ``DROP TRIGGER IF EXISTS``), atomically
        with its rows."""

    @abstractmethod
    async def sql_read(self, sql: str, args: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The rows of a query on committed state, each as a dict by column name."""
