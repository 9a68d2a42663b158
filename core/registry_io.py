"""Registry file formats: CSV (one file per kind) and JSON (one file for all kinds).

This module knows bytes, encodings, CSV dialects, JSON shapes and how a single
value (a number, a time, a flag list) is spelled, and nothing about what makes
a meter valid (that is ``core/registry.py``). Reading never
raises for bad content: it returns what it could read together with every
problem it found, so that one import run reports all mistakes in all files at
once instead of one per attempt. See docs/registry.md for the conventions.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from balans_edge.core.model import METER_FLAGS, UNITS, GroupInput, Resource
from balans_edge.core.schema import shown
from balans_edge.core.spreadsheet import read_cell, safe_cell
from balans_edge.core.storage.base import REGISTRY_KINDS
from balans_edge.core.text import check_text
from balans_edge.core.times import RANGE_TEXT, check_time, unix

JSON_FILE = "registry.json"
CSV_FILES = {f"{kind}.csv": kind for kind in REGISTRY_KINDS}
MAX_SHOWN = 100
"""Problems listed by ``str(RegistryError)``; the rest are counted, not shown."""


@dataclass(frozen=True, slots=True)
class Where:
    """A place in the input: ``meters.csv:12`` (CSV line) or
    ``registry.json:meters#3`` (the third item of the "meters" list, counted from 1)."""

    file: str
    line: int | None = None
    section: str | None = None

    def problem(self, column: str | None, message: str) -> Problem:
        return Problem(self.file, self.line, column, message, self.section)

    def __str__(self) -> str:
        if self.section is not None:
            return f"{self.file}:{self.section}" + ("" if self.line is None else f"#{self.line}")
        return self.file if self.line is None else f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with the input, precise enough to fix without guessing."""

    file: str
    line: int | None
    column: str | None
    message: str
    section: str | None = None
    """The JSON list ("meters") the item belongs to; ``line`` is then the item number."""

    @property
    def where(self) -> str:
        return str(Where(self.file, self.line, self.section))

    def __str__(self) -> str:
        column = "" if self.column is None else f'column "{self.column}": '
        return f"{self.where}: {column}{self.message}"


class RegistryError(Exception):
    """Registry input was refused; ``problems`` lists every reason. Nothing was written."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__(self.problems)

    def __str__(self) -> str:
        lines = [str(p) for p in self.problems[:MAX_SHOWN]]
        if len(self.problems) > MAX_SHOWN:
            lines.append(f"... and {len(self.problems) - MAX_SHOWN} more problems")
        return "\n".join(lines)


@dataclass(slots=True)
class Record:
    """One CSV row or JSON item, values as found in the file (CSV: all text)."""

    kind: str
    where: Where
    data: dict[str, Any]


@dataclass(slots=True)
class Source:
    """What one file holds, as far as it could be read."""

    file: str
    records: list[Record] = field(default_factory=list)
    headers: list[tuple[str, Where, list[str]]] = field(default_factory=list)
    """(kind, where, column names) of each CSV header row; JSON has none."""
    problems: list[Problem] = field(default_factory=list)
    incomplete: set[str] = field(default_factory=set)
    """Kinds this file carries but could not be read in full: references to
    objects of these kinds cannot be checked (they might be in the unread part)."""


def registry_files(folder: Path) -> list[Path]:
    """The registry files present in ``folder``, in dependency order."""
    names = [*CSV_FILES, JSON_FILE]
    return [folder / name for name in names if (folder / name).is_file()]


def read_file(path: Path) -> Source:
    """Read one registry file; a CSV file's name says its kind, a .json file may hold all kinds."""
    name = path.name
    suffix = path.suffix.lower()
    kind = CSV_FILES.get(name.lower())
    if suffix == ".json":
        kinds = set(REGISTRY_KINDS)
    elif kind is not None:
        kinds = {kind}
    else:
        expected = ", ".join([*CSV_FILES, "or a .json file"])
        return Source(name, problems=[Problem(name, None, None, f"unknown file name (expected {expected})")])
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Source(
            name, problems=[Problem(name, None, None, f"cannot read: {exc.strerror or exc}")], incomplete=kinds
        )
    text, problem = _decode(name, data)
    if text is None:
        return Source(name, problems=[problem] if problem else [], incomplete=kinds)
    if kind is None:
        return _read_json(name, text)
    return _read_csv(name, kind, text)


def _decode(name: str, data: bytes) -> tuple[str | None, Problem | None]:
    """UTF-8 only (a leading byte order mark is allowed): a guessed encoding
    would turn a consumer's name into mojibake without anyone noticing."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        body = exc.object  # after a byte order mark, if any
        line = body[: exc.start].count(b"\n") + 1
        offset = exc.start + len(data) - len(body)
        message = f"not UTF-8 text (byte 0x{body[exc.start]:02x} at offset {offset}); save the file as UTF-8"
        return None, Problem(name, line, None, message)
    if not text.strip():
        return None, Problem(name, 1, None, "file is empty (expected a header row naming the columns)")
    return text, None


def _delimiter(text: str) -> str:
    """Comma, or semicolon when the header has semicolons and no comma (the
    CSV that spreadsheets write in locales with a decimal comma)."""
    first = next((line for line in text.splitlines() if line.strip()), "")
    return ";" if ";" in first and "," not in first else ","


def _read_csv(name: str, kind: str, text: str) -> Source:
    source = Source(name)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=_delimiter(text), strict=True)
    header: list[str] | None = None
    start = 1
    try:
        for row in reader:
            line, start = start, reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip().lower() for cell in row]
                source.headers.append((kind, Where(name, line), header))
                continue
            record = _csv_record(kind, Where(name, line), header, row, source.problems)
            if record is not None:
                source.records.append(record)
    except csv.Error as exc:
        source.problems.append(Problem(name, reader.line_num or 1, None, f"not valid CSV: {exc}"))
        source.incomplete.add(kind)
    if header is None and not source.problems:
        source.problems.append(Problem(name, 1, None, "missing header row naming the columns"))
        source.incomplete.add(kind)
    return source


def _csv_record(kind: str, where: Where, header: list[str], row: list[str], problems: list[Problem]) -> Record | None:
    """Cells keyed by column name, without surrounding blanks (spreadsheets pad
    cells; no value means them) and with the formula escape of an export taken
    off (``core.spreadsheet``). Missing trailing cells are empty (spreadsheets
    drop them); a value beyond the named columns is an error, never dropped."""
    for i, cell in enumerate(row):
        if cell.strip() and (i >= len(header) or not header[i]):
            problems.append(
                where.problem(None, f"value {cell.strip()[:40]!r} in cell {i + 1}, which has no column name")
            )
            return None
    return Record(kind, where, {h: read_cell(cell.strip()) for h, cell in zip(header, row, strict=False) if h})


def _read_json(name: str, text: str) -> Source:
    source = Source(name)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        source.problems.append(Problem(name, exc.lineno, None, f"not valid JSON: {exc.msg} (column {exc.colno})"))
        source.incomplete.update(REGISTRY_KINDS)
        return source
    except (ValueError, RecursionError) as exc:
        source.problems.append(Problem(name, None, None, f"not valid JSON: {exc}"))
        source.incomplete.update(REGISTRY_KINDS)
        return source
    if not isinstance(doc, dict):
        shape = ", ".join(f'"{k}": [...]' for k in REGISTRY_KINDS)
        source.problems.append(Problem(name, None, None, f"expected an object {{{shape}}}"))
        source.incomplete.update(REGISTRY_KINDS)
        return source
    for section, items in doc.items():
        _json_section(source, section, items)
    return source


def _json_section(source: Source, section: str, items: Any) -> None:
    if section not in REGISTRY_KINDS:
        expected = ", ".join(REGISTRY_KINDS)
        source.problems.append(Problem(source.file, None, None, f'unknown section "{section}" (expected {expected})'))
        return
    if not isinstance(items, list):
        source.problems.append(Where(source.file, None, section).problem(None, "expected a list of objects"))
        source.incomplete.add(section)
        return
    for number, item in enumerate(items, start=1):
        where = Where(source.file, number, section)
        if isinstance(item, dict):
            source.records.append(Record(section, where, item))
        else:
            source.problems.append(where.problem(None, "expected an object with column names as keys"))
            source.incomplete.add(section)


def write_tables(folder: Path, fmt: str, tables: dict[str, tuple[Sequence[str], list[dict[str, Any]]]]) -> list[Path]:
    """Write ``kind -> (columns, rows)`` as one CSV file per kind or one JSON
    file. Each file is replaced atomically: a reader never sees half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        doc = {kind: [{c: row[c] for c in columns} for row in rows] for kind, (columns, rows) in tables.items()}
        path = folder / JSON_FILE
        _replace(path, json.dumps(doc, ensure_ascii=False, indent=2) + "\n")
        return [path]
    paths = []
    for kind, (columns, rows) in tables.items():
        out = io.StringIO(newline="")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([_cell(row[c]) for c in columns] for row in rows)
        path = folder / f"{kind}.csv"
        _replace(path, out.getvalue())
        paths.append(path)
    return paths


def _cell(value: Any) -> str:
    """A JSON-ready value as CSV text: None is an empty cell, lists are ``;``-separated;
    text a spreadsheet would run as a formula is escaped (numbers stay numbers)."""
    if value is None:
        return ""
    if isinstance(value, list):
        return safe_cell(";".join(value))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return safe_cell(value)
    return str(value)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)


# -- the domain rules of single values -----------------------------------------------
# What msgspec cannot say about a column (``core.registry_rows`` declares the columns):
# each parser accepts text (CSV) and JSON values, so that CSV, JSON and the HTTP API
# share one set of rules and messages.


class BadValue(ValueError):
    """A value that cannot be used; the message completes 'column "x": ...'."""


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


def plain_text(value: Any) -> str:
    """Text without surrounding blanks, so that a re-import of an export compares
    equal, and within the bound of free text (``core.text``)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadValue(f"expected text, got {shown(value)}")
    result = str(value).strip()
    if _CONTROL.search(result):
        raise BadValue(f"contains control characters: {shown(result)}")
    try:
        return check_text(result)
    except ValueError as exc:
        raise BadValue(str(exc)) from None


MAX_ID_LENGTH = 128
_NOT_IN_IDS = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Unicode categories an id may not hold: control, format (zero-width, bidi
marks), surrogate, private-use and unassigned characters, line and paragraph
separators: all invisible or shown differently by every program."""


def identifier(value: Any) -> str:
    """The id rule for meters, accounts, groups (and the other one-word columns).

    Ids are keys people type, read and put in URLs: any Unicode letters
    ("Кв-1") and spaces inside are normal, but two ids that look the same must
    be the same id. So an id is NFC-normalised (a composed "й" and "и" plus a
    combining breve are one id), holds only printable characters (no control,
    zero-width or bidi characters, no space but U+0020), has no white space at
    either end, no "/" (it is one URL path segment), is not "." or "..", does not
    start with "-" or "+" (a group input's sign), and is at most
    ``MAX_ID_LENGTH`` characters. CSV cells lose their surrounding blanks when
    read (``_csv_record``); a value given as JSON is refused with them.
    """
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadValue(f"expected an id (text), got {shown(value)}")
    result = unicodedata.normalize("NFC", str(value))
    bad = next((c for c in result if unicodedata.category(c) in _NOT_IN_IDS
                or (unicodedata.category(c) == "Zs" and c != " ")), None)
    if bad is not None:
        raise BadValue(f"an id may not contain U+{ord(bad):04X} (a control or invisible character, or a space "
                       f"other than U+0020), got {shown(result)}")
    if result != result.strip():
        raise BadValue(f"an id may not start or end with white space, got {shown(result)}")
    if "/" in result or result in (".", ".."):
        raise BadValue(f'an id may not contain "/" nor be "." or "..", got {shown(result)}')
    if result[:1] in ("-", "+"):  # a group's inputs read a leading sign as the direction of flow
        raise BadValue(f'an id may not start with "-" or "+" (the sign of a group input), got {shown(result)}')
    if len(result) > MAX_ID_LENGTH:
        raise BadValue(f"an id is at most {MAX_ID_LENGTH} characters, got {len(result)}")
    return result


def iso_time(value: Any) -> int:
    """ISO-8601 with a timezone, to unix seconds: a naive time would be off by the site's UTC offset."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.strip())
        except ValueError:
            moment = None
        if moment is not None and moment.tzinfo is not None:
            if moment.microsecond:
                raise BadValue(f"times are whole seconds, got {shown(value)}")
            try:
                return check_time(unix(moment))
            except (ValueError, OverflowError):
                raise BadValue(f"expected a time in {RANGE_TEXT}, got {shown(value)}") from None
    raise BadValue(f"expected an ISO-8601 time with a timezone such as 2014-01-01T00:00:00Z, got {shown(value)}")


def resource_name(value: Any) -> Resource:
    if isinstance(value, str):
        try:
            return Resource(value.strip().lower())
        except ValueError:
            pass
    raise BadValue(f"expected one of {', '.join(sorted(r.value for r in Resource))}, got {shown(value)}")


_UNIT_NAMES = {unit.lower(): unit for units in UNITS.values() for unit in units}


def unit_name(value: Any) -> str:
    """Any letter case of a known unit becomes its canonical spelling ("kwh" -> "kWh")."""
    result = identifier(value)
    return _UNIT_NAMES.get(result.lower(), result)


def _items(value: Any, what: str) -> list[str]:
    """A list cell: in CSV separated by ``;`` (or ``,`` in a quoted cell), in JSON a list of strings."""
    if isinstance(value, str):
        items = re.split(r"[;,]", value)
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise BadValue(f"expected a list of {what}, got {shown(value)}")
    return [item.strip() for item in items if item.strip()]


def flag_list(value: Any) -> frozenset[str]:
    """Meter flags: a list in JSON; in CSV one cell separated by ``;`` (or ``,`` in a quoted cell)."""
    found = {item.lower() for item in _items(value, "flags")}
    unknown = sorted(found - METER_FLAGS)
    if unknown:
        raise BadValue(f'unknown flag "{unknown[0]}" (allowed: {", ".join(sorted(METER_FLAGS))})')
    return frozenset(found)


def group_inputs(value: Any) -> tuple[GroupInput, ...]:
    """Input meters of a group: ``M1;-M2`` in CSV (``-`` marks an outgoing or
    transit meter), a list of such strings in JSON. An empty list is no input
    meter (the group's formula gives its input; ``core.registry`` checks that
    a group has one or the other)."""
    inputs = []
    for item in _items(value, 'meter ids, e.g. "IN-1;-TRANSIT-2"'):
        sign, meter_id = (-1, item[1:].strip()) if item.startswith("-") else (1, item.lstrip("+").strip())
        inputs.append(GroupInput(identifier(meter_id), sign))
    return tuple(inputs)


def choice(options: Sequence[str]) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if isinstance(value, str) and value.strip().lower() in options:
            return value.strip().lower()
        raise BadValue(f"expected one of {', '.join(options)}, got {shown(value)}")

    return parse

