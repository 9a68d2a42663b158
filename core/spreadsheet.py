"""CSV cells that a spreadsheet opens as text, never as a formula.

A cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is
run as a formula by Excel, LibreOffice and Google Sheets ("CSV injection"): a
consumer named ``=HYPERLINK(...)`` in a registry export would act in the
operator's spreadsheet. Every CSV the server writes passes its *text* cells
through ``safe_cell``, which puts a ``'`` before such a value (spreadsheets
show the text as written); numbers are written as numbers, so ``-71`` stays
``-71``. ``read_cell`` takes one ``'`` off again, so a file the server wrote
reads back equal. A value that itself starts with ``'`` gets one more, so the
round trip is exact for every text.
"""

from __future__ import annotations

TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
"""First characters a spreadsheet reads as the start of a formula."""
QUOTE = "'"


def safe_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text."""
    return QUOTE + text if text.startswith((*TRIGGERS, QUOTE)) else text


def read_cell(text: str) -> str:
    """The text ``safe_cell`` wrote: one leading ``'`` before a trigger or another ``'`` is removed."""
    return text[1:] if text.startswith(QUOTE) and text[1:].startswith((*TRIGGERS, QUOTE)) else text
