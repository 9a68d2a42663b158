"""Modbus data types and byte orders: values to 16-bit registers and back.

Modbus itself only moves 16-bit registers; how a 32- or 64-bit value is laid
over several of them is each vendor's choice, and the most common support
question of gateways is a float read in the wrong order. The four orders have
the names SCADA integrators know, for the bytes A (most significant) .. D of a
32-bit value: ABCD (big-endian, Modbus's own order for one register), CDAB
(words swapped: "little-endian word order"), BADC (bytes swapped in each
word), DCBA (little-endian). A 64-bit value follows the same rule over its
four words. A single register's 16-bit value only knows byte order: ABCD and
CDAB keep it, BADC and DCBA swap its two bytes.

Whole arrays at once with numpy: a register block of thousands of values is
encoded or decoded without a Python loop per value. Written here rather than
taken from pymodbus, whose ``convert_to/from_registers`` know only the word
order (not the byte swaps) and work one value at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np

DataType = Literal["uint16", "int16", "uint32", "int32", "float32", "float64"]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]

DATA_TYPES: tuple[str, ...] = get_args(DataType)
BYTE_ORDERS: tuple[str, ...] = get_args(ByteOrder)

_NUMPY = {"uint16": ">u2", "int16": ">i2", "uint32": ">u4", "int32": ">i4", "float32": ">f4", "float64": ">f8"}


def register_count(dtype: str) -> int:
    """Registers one value of ``dtype`` takes."""
    return np.dtype(_NUMPY[_check_type(dtype)]).itemsize // 2


def _check_type(dtype: str) -> str:
    if dtype not in _NUMPY:
        raise ValueError(f"unknown data type {dtype!r} (known: {', '.join(DATA_TYPES)})")
    return dtype


def _permutation(nbytes: int, order: str) -> np.ndarray:
    """Byte positions of the big-endian value in the wire order. Every order is its
    own inverse (a swap of bytes, of words, or both), so decoding uses it too."""
    if order not in BYTE_ORDERS:
        raise ValueError(f"unknown byte order {order!r} (known: {', '.join(BYTE_ORDERS)})")
    words = nbytes // 2
    swap_bytes = order in ("BADC", "DCBA")
    reverse_words = order in ("CDAB", "DCBA")
    out = []
    for j in range(words):
        source = words - 1 - j if reverse_words else j
        out += [2 * source + 1, 2 * source] if swap_bytes else [2 * source, 2 * source + 1]
    return np.array(out, dtype=np.intp)


def encode(values: Sequence[float] | np.ndarray, dtype: str, order: str = "ABCD") -> list[int]:
    """Registers (0..65535) holding ``values`` one after the other. An integer type
    refuses a value it cannot hold or a fraction (the map must scale first)."""
    kind = np.dtype(_NUMPY[_check_type(dtype)])
    raw = np.asarray(values, dtype=np.float64).ravel()
    if kind.kind in "iu":
        info = np.iinfo(kind)
        bad = (raw < info.min) | (raw > info.max) | (raw != np.round(raw)) | ~np.isfinite(raw)
        if bad.any():
            value = float(raw[int(np.argmax(bad))])
            raise ValueError(f"{value:g} does not fit {dtype} (an integer {info.min}..{info.max})")
    data = raw.astype(kind).view(np.uint8).reshape(len(raw), kind.itemsize)
    wire = data[:, _permutation(kind.itemsize, order)]
    return np.ascontiguousarray(wire).view(">u2").ravel().astype(np.int64).tolist()


def decode(registers: Sequence[int] | np.ndarray, dtype: str, order: str = "ABCD") -> np.ndarray:
    """Values held by consecutive ``registers``: their count must be a multiple of
    the type's size."""
    kind = np.dtype(_NUMPY[_check_type(dtype)])
    regs = np.asarray(registers, dtype=np.int64).ravel()
    size = kind.itemsize // 2
    if len(regs) % size:
        raise ValueError(f"{len(regs)} registers do not hold whole {dtype} values ({size} registers each)")
    if ((regs < 0) | (regs > 0xFFFF)).any():
        raise ValueError("a register holds 0..65535")
    wire = regs.astype(">u2").view(np.uint8).reshape(-1, kind.itemsize)
    data = np.ascontiguousarray(wire[:, _permutation(kind.itemsize, order)])
    return data.view(kind).ravel().astype(np.float64 if kind.kind == "f" else np.int64)
