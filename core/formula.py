"""The formula language of calculated inputs, parsed once and evaluated hourly.

A district fed through a tank is metered by what its pumps deliver less what
the tank stores: ``tag:PS1/flow - 150 * d(tag:PS1/level)/dt``; a group fed
by several pipes and exporting through one is ``meter:A + meter:B - meter:C``.
Grammar (blanks between tokens are free; the typographic minus U+2212, the
multiplication signs U+00D7 and U+00B7 and the division sign U+00F7 are read
as ``-``, ``*`` and ``/``)::

    formula := sum
    sum     := product (("+" | "-") product)*
    product := unary (("*" | "/") unary)*
    unary   := ("+" | "-") unary | atom
    atom    := NUMBER | term | "(" sum ")" | "d(" tag ")/dt" | "rate(" tag ")"
    term    := ("meter" | "tag") ":" ID
    ID      := "quoted text" ("" inside is one ") | bare text

A bare id runs to the next blank, parenthesis, quote, ``:`` or operator other
than ``-`` (and ``/`` in a tag id, which is ``device/name``): write blanks
around a minus or a division that follows an id (``meter:W-1 - meter:W-2``),
and quote ids with blanks or operator characters (``meter:"Ввод 1"``).

The parser is hand-written (a tokenizer and a recursive descent of a few
dozen lines) rather than Python's ``ast`` in a restricted way: term ids hold
``:``, ``/``, ``-``, blanks and any letters, which Python's grammar cannot
read without rewriting the text first, and the rewrite would lose the
positions that errors must name. Nothing is ever executed: the parse is a
tree of four node types, and evaluation is numpy arithmetic over them.

Evaluation is over an hour grid: every term is a (values, quality) pair of
(H,) arrays, the result's quality is the worst of its terms' (``Quality``),
and an hour with a missing term (or a result that is not finite, such as a
division by zero) is missing, with a NaN value.
"""

from __future__ import annotations

import functools
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from balans_edge.core.model import Quality

MAX_LENGTH = 2000
"""Characters a formula may have."""
MAX_DEPTH = 60
"""Nesting (parentheses, signs) and operator chain a formula may have: bounds the recursion."""

TermKind = Literal["meter", "tag", "rate"]
"""``meter``: the meter's hourly consumption; ``tag``: the tag's mean over the hour;
``rate``: the tag's change over the hour (``d(tag)/dt`` per hour)."""
Series = tuple[np.ndarray, np.ndarray]
"""(values float64, quality int8) over the hour grid."""

_OPERATORS = {"+": "+", "-": "-", "*": "*", "/": "/", "(": "(", ")": ")",
              "\u2212": "-", "\u00d7": "*", "\u00b7": "*", "\u2219": "*", "\u00f7": "/"}
_STOP = frozenset(_OPERATORS) | frozenset("\"':,")
"""Characters that end a bare id (``-`` and, in tag ids, ``/`` excepted)."""


class FormulaError(ValueError):
    """A formula that cannot be read or does not fit the registry. ``position``
    is the 1-based character where the problem is (None: the whole formula)."""

    def __init__(self, message: str, position: int | None = None) -> None:
        self.message = message
        self.position = position
        super().__init__(message if position is None else f"at character {position}: {message}")


@dataclass(frozen=True, slots=True)
class Number:
    value: float


@dataclass(frozen=True, slots=True)
class Term:
    kind: TermKind
    id: str
    position: int
    """1-based character where the term starts, for errors about it."""

    @property
    def key(self) -> tuple[TermKind, str]:
        return self.kind, self.id

    def __str__(self) -> str:
        kind = "meter" if self.kind == "meter" else "tag"
        ref = f"{kind}:{_quoted(self.id, kind)}"
        return f"d({ref})/dt" if self.kind == "rate" else ref


@dataclass(frozen=True, slots=True)
class Negative:
    operand: Node


@dataclass(frozen=True, slots=True)
class Binary:
    op: str
    left: Node
    right: Node


Node = Number | Term | Negative | Binary


def _quoted(ident: str, kind: str) -> str:
    """The id as a formula spells it: bare when it reads back the same, else quoted."""
    inside = {"-", "/"} if kind == "tag" else {"-"}
    if ident and not any(c.isspace() or (c in _STOP and c not in inside) for c in ident):
        return ident
    return '"' + ident.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class Formula:
    """A parsed formula: its text, its tree and the terms it reads (each once, in order)."""

    text: str
    root: Node
    terms: tuple[Term, ...]

    @property
    def meters(self) -> tuple[str, ...]:
        return tuple(t.id for t in self.terms if t.kind == "meter")

    @property
    def tags(self) -> tuple[str, ...]:
        """Every tag the formula reads (as a mean or as a rate), each once."""
        return tuple(dict.fromkeys(t.id for t in self.terms if t.kind != "meter"))

    def meter_signs(self) -> dict[str, int]:
        """Each meter's direction in the input: -1 where the formula subtracts it
        (an outgoing or transit pipe), +1 otherwise. Constant factors count with
        their sign; a meter multiplied by another term counts as +1."""
        weights: dict[str, float] = {}
        _signs(self.root, 1.0, weights)
        return {m: -1 if weights.get(m, 1.0) < 0 else 1 for m in self.meters}

    def evaluate(self, terms: Mapping[tuple[TermKind, str], Series], hours: int) -> Series:
        """The formula over ``hours`` hours from each term's (values, quality)
        (``terms`` by ``Term.key``; a term not given is missing every hour)."""
        values, quality = _evaluate(self.root, terms, hours)
        values = np.broadcast_to(np.asarray(values, np.float64), (hours,)).copy()
        quality = np.broadcast_to(np.asarray(quality, np.int8), (hours,)).copy()
        bad = ~np.isfinite(values) | (quality >= Quality.MISSING)
        values[bad] = np.nan
        quality[bad] = Quality.MISSING
        return values, quality


def _signs(node: Node, sign: float, out: dict[str, float]) -> None:
    if isinstance(node, Term):
        if node.kind == "meter":
            out[node.id] = out.get(node.id, 0.0) + sign
    elif isinstance(node, Negative):
        _signs(node.operand, -sign, out)
    elif isinstance(node, Binary):
        left, right = _constant(node.left), _constant(node.right)
        if node.op in "+-":
            _signs(node.left, sign, out)
            _signs(node.right, -sign if node.op == "-" else sign, out)
        elif left is not None:  # c * x: x counts with the sign of c
            if node.op == "*":
                _signs(node.right, sign * np.sign(left), out)
        elif right is not None:  # x * c, x / c
            _signs(node.left, sign * np.sign(right), out)
        else:
            _signs(node.left, sign, out)
            _signs(node.right, sign, out)


def _constant(node: Node) -> float | None:
    """The value of a part of the formula without terms (None when it reads a term)."""
    if isinstance(node, Number):
        return node.value
    if isinstance(node, Negative):
        inner = _constant(node.operand)
        return None if inner is None else -inner
    if isinstance(node, Binary):
        a, b = _constant(node.left), _constant(node.right)
        if a is None or b is None:
            return None
        with np.errstate(all="ignore"):
            return float({"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}[node.op](a, b))
    return None


_UFUNCS = {"+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide}


def _evaluate(node: Node, terms: Mapping[tuple[TermKind, str], Series], hours: int) -> tuple[object, object]:
    """(values, quality), each a scalar (constants) or an (H,) array."""
    if isinstance(node, Number):
        return node.value, np.int8(Quality.MEASURED)
    if isinstance(node, Term):
        given = terms.get(node.key)
        if given is None:
            return np.full(hours, np.nan), np.full(hours, Quality.MISSING, np.int8)
        values = np.asarray(given[0], np.float64)
        quality = np.minimum(np.asarray(given[1], np.int8), np.int8(Quality.MISSING))  # not installed: missing
        return values, np.where(np.isnan(values), np.int8(Quality.MISSING), quality).astype(np.int8)
    if isinstance(node, Negative):
        values, quality = _evaluate(node.operand, terms, hours)
        return np.negative(values), quality
    a, qa = _evaluate(node.left, terms, hours)
    b, qb = _evaluate(node.right, terms, hours)
    with np.errstate(all="ignore"):
        return _UFUNCS[node.op](a, b), np.maximum(qa, qb)


# -- parsing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: Literal["number", "op", "name", "term", "end"]
    text: str
    position: int
    """1-based."""
    value: float | str | None = None


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in _OPERATORS:
            out.append(_Token("op", _OPERATORS[c], i + 1))
            i += 1
        elif (c.isdecimal() and c.isascii()) or (c == "." and text[i + 1: i + 2].isdecimal()):
            j = _number_end(text, i)
            try:
                value = float(text[i:j])
            except ValueError:
                raise FormulaError(f'"{text[i:j]}" is not a number', i + 1) from None
            if not np.isfinite(value):
                raise FormulaError(f'"{text[i:j]}" is too large a number', i + 1)
            out.append(_Token("number", text[i:j], i + 1, value))
            i = j
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (text[j].isalnum() or text[j] == "_"):
                j += 1
            word = text[i:j]
            if j < n and text[j] == ":":
                kind = word.lower()
                if kind not in ("meter", "tag"):
                    raise FormulaError(f'unknown kind of term "{word}:" (expected meter: or tag:)', i + 1)
                ident, j = _ident(text, j + 1, kind)
                out.append(_Token("term", kind, i + 1, ident))
            else:
                out.append(_Token("name", word, i + 1))
            i = j
        elif c == ":":
            raise FormulaError('unexpected ":" (a bare id ends at a blank or an operator other than "-": put blanks '
                               'around a minus after an id, or quote the id)', i + 1)
        else:
            raise FormulaError(f'unexpected character "{c}"', i + 1)
    out.append(_Token("end", "", n + 1))
    return out


def _number_end(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i].isascii() and text[i].isdecimal():
        i += 1
    if i < n and text[i] == ".":
        i += 1
        while i < n and text[i].isascii() and text[i].isdecimal():
            i += 1
    if i < n and text[i] in "eE":
        j = i + 1
        if j < n and text[j] in "+-":
            j += 1
        if j < n and text[j].isascii() and text[j].isdecimal():
            while j < n and text[j].isascii() and text[j].isdecimal():
                j += 1
            i = j
    return i


def _ident(text: str, i: int, kind: str) -> tuple[str, int]:
    """The id after ``meter:`` or ``tag:`` at ``i`` and where it ends."""
    n = len(text)
    if i < n and text[i] == '"':
        j, chars = i + 1, []
        while True:
            if j >= n:
                raise FormulaError(f"the quoted {kind} id is not closed with a quote", i + 1)
            if text[j] == '"':
                if text[j + 1: j + 2] == '"':
                    chars.append('"')
                    j += 2
                    continue
                break
            chars.append(text[j])
            j += 1
        ident, end = "".join(chars), j + 1
    else:
        j = i
        while j < n and not text[j].isspace() and (text[j] not in _STOP or text[j] == "-"
                                                   or (text[j] == "/" and kind == "tag")):
            j += 1
        ident, end = text[i:j], j
    ident = unicodedata.normalize("NFC", ident)
    if not ident.strip():
        raise FormulaError(f"{kind}: needs an id (quote an id with blanks: {kind}:\"my id\")", i + 1)
    if ident != ident.strip():
        raise FormulaError(f"a {kind} id may not start or end with blanks", i + 1)
    return ident, end


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.i = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.i]

    def take(self) -> _Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def expect(self, kind: str, text: str, why: str) -> _Token:
        token = self.token
        if token.kind != kind or token.text != text:
            raise FormulaError(f"expected {why}, found {_shown(token)}", token.position)
        return self.take()

    def sum(self, depth: int) -> Node:
        node = self.product(depth)
        while self.token.kind == "op" and self.token.text in "+-":
            op = self.take().text
            node = Binary(op, node, self.product(depth))
        return node

    def product(self, depth: int) -> Node:
        node = self.unary(depth)
        while self.token.kind == "op" and self.token.text in "*/":
            op = self.take().text
            node = Binary(op, node, self.unary(depth))
        return node

    def unary(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise FormulaError(f"nested deeper than {MAX_DEPTH} levels", self.token.position)
        if self.token.kind == "op" and self.token.text in "+-":
            sign = self.take().text
            operand = self.unary(depth + 1)
            return Negative(operand) if sign == "-" else operand
        return self.atom(depth)

    def atom(self, depth: int) -> Node:
        token = self.take()
        if token.kind == "number":
            return Number(float(token.value or 0.0))
        if token.kind == "term":
            return Term("meter" if token.text == "meter" else "tag", str(token.value), token.position)
        if token.kind == "op" and token.text == "(":
            node = self.sum(depth + 1)
            self.expect("op", ")", '")" to close the "(" at character ' + str(token.position))
            return node
        if token.kind == "name" and token.text in ("d", "rate"):
            self.expect("op", "(", f'"(" after {token.text}')
            inner = self.take()
            if inner.kind != "term" or inner.text != "tag":
                raise FormulaError(f"{token.text}() takes one tag (tag:device/name), found {_shown(inner)}",
                                   inner.position)
            self.expect("op", ")", f'")" after the tag of {token.text}(')
            if token.text == "d":
                self.expect("op", "/", '"/dt" after d(...)')
                self.expect("name", "dt", '"dt" after d(...)/')
            return Term("rate", str(inner.value), token.position)
        if token.kind == "name":
            raise FormulaError(f'unknown name "{token.text}" (a term is meter:ID or tag:DEVICE/NAME; functions: '
                               "d(tag:...)/dt, rate(tag:...))", token.position)
        raise FormulaError(f"expected a number, a term or \"(\", found {_shown(token)}", token.position)


def _shown(token: _Token) -> str:
    if token.kind == "end":
        return "the end of the formula"
    if token.kind == "term":
        return f'the term "{token.text}:{token.value}"'
    return f'"{token.text}"'


def _depth(root: Node) -> int:
    """Depth of the tree, without recursion (a long chain of sums is deep on its left)."""
    deepest, stack = 0, [(root, 1)]
    while stack:
        node, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(node, Negative):
            stack.append((node.operand, d + 1))
        elif isinstance(node, Binary):
            stack += [(node.left, d + 1), (node.right, d + 1)]
    return deepest


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> Formula:
    """The formula of ``text``; FormulaError (a ValueError) names what is wrong and where.

    Parsed once per distinct text (cached): the registry keeps the text, every
    evaluation reuses the tree."""
    if not isinstance(text, str):
        raise FormulaError(f"a formula is text, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"a formula is at most {MAX_LENGTH} characters, got {len(text)}")
    if not text.strip():
        raise FormulaError("the formula is empty")
    parser = _Parser(text)
    root = parser.sum(0)
    if parser.token.kind != "end":
        token = parser.token
        hint = " (put blanks around a minus or a division after an id)" if token.kind in ("term", "name") else ""
        raise FormulaError(f"expected an operator or the end, found {_shown(token)}{hint}", token.position)
    if _depth(root) > 4 * MAX_DEPTH:
        raise FormulaError(f"more than {4 * MAX_DEPTH} operators in a chain")
    terms: dict[tuple[TermKind, str], Term] = {}
    stack: list[Node] = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, Term):
            terms.setdefault(node.key, node)
        elif isinstance(node, Negative):
            stack.append(node.operand)
        elif isinstance(node, Binary):
            stack += [node.right, node.left]
    ordered = tuple(sorted(terms.values(), key=lambda t: t.position))
    return Formula(text, root, ordered)
