"""The settings every protocol client's tag has next to its addressing (Modbus
registers, OPC UA nodes): scaling, how samples are stored, and the registry
meter a totaliser may be. The rules that use them are in ``core.tags``."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from balans_edge.core.tags import meter_problems
from balans_edge.settings import setting

NAME = re.compile(r"[A-Za-z0-9_.-]+")


def tag_name(value: str) -> str | None:
    """The setting check of tag and device names (they are parts of tag ids)."""
    return None if NAME.fullmatch(value) else "expected letters, digits, '_', '.' or '-' (it is part of a tag id)"


@dataclass(frozen=True, kw_only=True)
class TagSettings:
    """Scaling, storage and the meter of one tag (``core.tags.TagSpec``)."""

    name: Annotated[str, setting(check=tag_name, doc="unique within its device; the tag id is '<device>/<name>'")]
    unit: Annotated[str, setting(doc="shown with the value; for a meter, its unit")] = ""
    scale: Annotated[float, setting(doc="value = raw * scale + offset (booleans read as 1 or 0)")] = 1.0
    offset: Annotated[float, setting(doc="value = raw * scale + offset")] = 0.0
    deadband: Annotated[float, setting(range=(0.0, 1e12), doc=(
        "store a sample when the value moved more than this"))] = 0.0
    meter_id: Annotated[str, setting(doc="make this totaliser a registry meter with this id")] = ""
    module_id: Annotated[int, setting(range=(0, 2**32 - 1), doc="the meter's virtual module number (unique)")] = 0
    resource: Annotated[Literal["water", "gas", "heat", "electricity"], setting(doc="the meter's "
                                                                                   "resource")] = "water"
    resolution: Annotated[float, setting(range=(0.0, 1e9), doc=(
        "the meter's quantity per count (its pulse weight)"))] = 0.0
    reading_every_s: Annotated[float, setting(range=(1.0, 86400.0), doc="a meter reading at most this often")] = 60.0

    def scaled(self, raw: float) -> float:
        """The engineering value of a raw value read (a boolean reads as 1 or 0)."""
        return raw * self.scale + self.offset

    def problems(self) -> list[str]:
        """What is wrong with this tag on its own (its device names it in the error)."""
        out = []
        if self.scale == 0 or not math.isfinite(self.scale) or not math.isfinite(self.offset):
            out.append("scale must be a non-zero number and offset a number")
        if self.meter_id:
            out += meter_problems(self)
        return out
