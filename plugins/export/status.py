"""One target's figures under one set of names, whoever shows them: the running
server (health, ``GET /api/v1/export/targets``, the Prometheus metrics) and
``balans-edge export status --json``, which reads the database whether the
server runs or not (docs/export.md, "Observability").

The state word comes from one vocabulary. The command line reads the database,
so it knows the states that the stored figures tell (``unconfigured``,
``disabled``, ``full``, ``queued``, ``idle``); the running server adds those only
the sender knows (``starting``, ``sending``, ``retrying``, ``stopped``).
"""

from __future__ import annotations

from typing import Any

from balans_edge.core.redact import redact_url
from balans_edge.core.times import iso
from balans_edge.plugins.export.config import TargetConfig

STATES = ("starting", "idle", "queued", "sending", "retrying", "full", "disabled", "stopped", "unconfigured")


def state(row: dict[str, Any], config: TargetConfig | None, runtime: str | None = None) -> str:
    """The target's state word; ``runtime`` is the sender's own (None: read from the database only)."""
    if config is None:
        return "unconfigured"
    if not config.enabled:
        return "disabled"
    if runtime in ("starting", "stopped", "retrying"):
        return runtime
    if row["depth"] >= row["max_queue"]:
        return "full"
    if runtime == "sending":
        return "sending"
    return "queued" if row["depth"] else "idle"


def target_status(row: dict[str, Any], config: TargetConfig | None, now: float,
                  runtime: str | None = None) -> dict[str, Any]:
    """The documented figures of one target from its stored row (``Storage.export_state``)."""
    oldest = row["oldest_t"]
    return {
        "target": row["name"],
        "state": state(row, config, runtime),
        "url": None if config is None else redact_url(config.url),
        "bucket": None if config is None else config.bucket,
        "kinds": list(row["kinds"]),
        "queue_depth": row["depth"],
        "max_queue": row["max_queue"],
        "when_full": row["when_full"],
        "oldest_age_s": None if oldest is None else max(0, round(now - oldest)),
        "points_sent": row["sent"],
        "retries": row["retries"],
        "dead_letters": row["dead"],
        "dead_letter_batches": row["dead_letters"],
        "dropped": row["dropped"],
        "last_error": row["last_error"] or None,
        "last_error_at": None if row["last_error_at"] is None else iso(row["last_error_at"]),
        "last_sent_at": None if row["last_sent_at"] is None else iso(row["last_sent_at"]),
    }
