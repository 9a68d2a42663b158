"""Free text people write (a finding's note, a command's reason, a consumer's
name or address): one bound, so that no request can make the server store,
index and echo megabytes, and one message that names the field."""

from __future__ import annotations

MAX_TEXT_BYTES = 4096
"""Bytes of UTF-8 a free-text field holds at most (4 KiB: a long note, not a document)."""


def check_text(value: str) -> str:
    """``value`` if it fits the bound; otherwise a ValueError saying the bound,
    for the caller to put after the field's name."""
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_TEXT_BYTES:
        raise ValueError(f"at most {MAX_TEXT_BYTES} bytes of text (UTF-8), got {size}")
    return value
