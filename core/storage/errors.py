"""What storage raises, whichever backend and repository."""

from __future__ import annotations


class StorageError(Exception):
    """Storage is unavailable or refused a write; the caller may retry later."""
