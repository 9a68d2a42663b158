"""``[plugins.export]``: the targets points are exported to, what each takes, and
how its queue and its sender behave."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Literal

from balans_edge.plugins.export.feeds import EXPORT_KINDS
from balans_edge.plugins.export.records import ExportTarget
from balans_edge.settings import setting

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
RESERVED_TAGS = frozenset({
    "site", "meter", "resource", "unit", "group", "level", "region", "city", "district", "street", "house",
    "entrance", "detector", "kind", "subject", "source", "module", "concentrator",
})
"""Tag keys the exporter sets itself (docs/export.md); a target's static tags may not reuse them."""


def _name(value: str) -> str | None:
    return None if NAME.fullmatch(value) else "expected 1..64 letters, digits, '_', '.' or '-'"


def _url(value: str) -> str | None:
    return None if re.fullmatch(r"https?://[^\s/]+(/\S*)?", value) else "expected http://HOST[:PORT] or https://..."


def _non_empty(value: str) -> str | None:
    return None if value else "expected a non-empty value"


def _prefix(value: str) -> str | None:
    return None if re.fullmatch(r"[A-Za-z0-9_]*", value) else "expected letters, digits and '_' only"


@dataclass(frozen=True)
class TargetConfig:
    """One InfluxDB v2 write API endpoint (InfluxDB 2.x/3.x, VictoriaMetrics, ...)."""

    name: Annotated[str, setting(check=_name, doc="names the target in status, metrics and the command line")]
    url: Annotated[str, setting(check=_url, doc="base URL; points go to URL/api/v2/write")]
    bucket: Annotated[str, setting(check=_non_empty, doc="InfluxDB bucket (VictoriaMetrics ignores it)")]
    org: Annotated[str, setting(doc="InfluxDB organisation")] = ""
    token: Annotated[str, setting(secret=True, doc="API token, sent as 'Authorization: Token ...'")] = ""
    enabled: Annotated[bool, setting(doc="false: stop queueing for this target (its queue is kept)")] = True
    kinds: Annotated[list[str], setting(doc=f"what is exported, any of {', '.join(EXPORT_KINDS)}")] = \
        field(default_factory=lambda: list(EXPORT_KINDS))
    batch_size: Annotated[int, setting(range=(1, 100_000), doc="points per request at most")] = 5000
    flush_interval_s: Annotated[float, setting(range=(0.01, 3600.0), doc=(
        "longest a point waits for a batch to fill up before it is sent"))] = 1.0
    max_queue: Annotated[int, setting(range=(1, 1_000_000_000), doc="points the queue holds at most")] = 1_000_000
    when_full: Annotated[Literal["drop_oldest", "block"], setting(doc="what a full queue does")] = "drop_oldest"
    gzip: Annotated[bool, setting(doc="compress request bodies (`Content-Encoding: gzip`)")] = True
    timeout_s: Annotated[float, setting(range=(0.1, 600.0), doc="per request")] = 10.0
    backoff_initial_s: Annotated[float, setting(range=(0.001, 3600.0), doc=(
        "first wait after a failed request; doubles per failure"))] = 1.0
    backoff_max_s: Annotated[float, setting(range=(0.001, 86400.0), doc=(
        "longest wait between retries (each wait is drawn from its upper half)"))] = 60.0
    retry_after_max_s: Annotated[float, setting(range=(0.0, 86400.0), doc=(
        "longest Retry-After that is honoured"))] = 600.0
    measurement_prefix: Annotated[str, setting(check=_prefix, doc="put before every measurement name")] = ""
    tags: Annotated[dict[str, str], setting(doc=(
        'static tags added to every point (`{ edge = "box-17" }`); the exporter\'s own tag keys are refused'))] = \
        field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.kinds) - set(EXPORT_KINDS))
        if unknown:
            raise ValueError(f"target {self.name}: unknown kind {unknown[0]!r} (known: {', '.join(EXPORT_KINDS)})")
        if len(set(self.kinds)) != len(self.kinds):
            raise ValueError(f"target {self.name}: a kind is listed twice")
        if self.backoff_initial_s > self.backoff_max_s:
            raise ValueError(f"target {self.name}: backoff_initial_s is larger than backoff_max_s")
        for key, value in self.tags.items():
            if not isinstance(value, str) or not value or not NAME.fullmatch(key):
                raise ValueError(f"target {self.name}: tags.{key}: expected a non-empty string under a plain key")
            if key in RESERVED_TAGS:
                raise ValueError(f"target {self.name}: tags.{key}: the exporter sets this tag itself")

    def queue_target(self) -> ExportTarget:
        """What the queue needs to know: which kinds feed it, and its bound."""
        return ExportTarget(self.name, tuple(self.kinds) if self.enabled else (), self.max_queue, self.when_full)


@dataclass(frozen=True)
class ExportConfig:
    """``[plugins.export]``: the InfluxDB v2 write API targets points are exported to, each
    with its own store-and-forward queue (docs/export.md)."""

    targets: Annotated[list[TargetConfig], setting(doc="`[[plugins.export.targets]]`, each with its own "
                                                       "queue")] = field(default_factory=list)

    def __post_init__(self) -> None:
        names = [t.name for t in self.targets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"targets: name {twice[0]!r} is used more than once")
