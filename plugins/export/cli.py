"""``balans-edge export ...``: the targets' state, back-fill of history, dead
letters, and removing a target that is no longer wanted.

These commands open the database themselves (``cli.with_storage``, which
applies the plugins' migrations first), so they work whether the server runs
or not; the storage object is the SQL gateway the plugin's repository is built
on, as the server's ``context.database`` is. A back-fill queues points for the
running server's exporter to send (and waits for room when a queue is full).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import click

from balans_edge.core.calendar import local_day
from balans_edge.core.storage.gateway import SqlGateway
from balans_edge.core.times import hour_ceil, iso
from balans_edge.plugins.export.config import ExportConfig, TargetConfig
from balans_edge.plugins.export.feeds import EXPORT_KINDS
from balans_edge.plugins.export.repository import ExportRepository
from balans_edge.plugins.export.status import target_status

T = TypeVar("T")
PAGE = 10_000
"""Points queued per back-fill step."""


def day_hours(t0: int, t1: int, tz: ZoneInfo) -> list[int]:
    """The first stored hour (UTC, hour-aligned) of every local day that starts in [t0, t1):
    one back-fill entry per group and day is enough for the day's point."""
    start, end = local_day(t0, tz)
    out = []
    while start < t1:
        if start >= t0:
            out.append(hour_ceil(start))
        start, end = end, local_day(end, tz)[1]
    return out


async def _room(queues: ExportRepository, target: TargetConfig, wait_s: float) -> int:
    """Free places in the target's queue; wait while it is full and draining."""
    deadline = time.monotonic() + wait_s
    last_depth: int | None = None
    while True:
        depth = (await queues.state(target.name))[0]["depth"]
        room = target.max_queue - depth
        if room > 0:
            return room
        if depth != last_depth:  # the server is sending: give it more time
            deadline, last_depth = time.monotonic() + wait_s, depth
        if time.monotonic() > deadline:
            raise click.ClickException(
                f"the queue of {target.name} is full ({depth:,} points) and did not drain for {wait_s:.0f} s: "
                "is the server running and the target reachable? Resume later with a later --from.")
        await asyncio.sleep(0.5)


async def backfill(queues: ExportRepository, config: ExportConfig, tz: ZoneInfo, targets: Sequence[TargetConfig],
                   kinds: Sequence[str], t0: int, t1: int, wait_s: float) -> dict[str, dict[str, int]]:
    """Queue the stored points of ``kinds`` with t0 <= time < t1 for ``targets``,
    page by page, never beyond a queue's bound; return how many per target and kind."""
    await queues.configure([t.queue_target() for t in config.targets])
    done: dict[str, dict[str, int]] = {}
    for target in targets:
        for kind in kinds:
            times = day_hours(t0, t1, tz) if kind == "balance_daily" else None
            if times == []:
                continue
            lo, hi = (min(times), max(times) + 1) if times else (t0, t1)
            total = await queues.backfill_count(kind, lo, hi, times)
            queued, after = 0, None
            with click.progressbar(length=total, label=f"{target.name} {kind:<14}", show_pos=True) as bar:
                while queued < total:
                    room = await _room(queues, target, wait_s)
                    n, after = await queues.backfill(target.name, kind, lo, hi, after, min(PAGE, room), times)
                    if n == 0:
                        break
                    queued += n
                    bar.update(n)
            done.setdefault(target.name, {})[kind] = queued
    return done


def _status_lines(statuses: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'target':<16} {'state':<12} {'queued':>10} {'oldest':>8} {'sent':>12} {'retries':>8} "
             f"{'dead':>8} {'dropped':>8}  last error"]
    for s in statuses:
        age = "-" if s["oldest_age_s"] is None else f"{s['oldest_age_s']}s"
        error = f"{s['last_error']} ({s['last_error_at']})" if s["last_error"] else ""
        lines.append(f"{s['target']:<16} {s['state']:<12} {s['queue_depth']:>10,} {age:>8} {s['points_sent']:>12,} "
                     f"{s['retries']:>8,} {s['dead_letters']:>8,} {s['dropped']:>8,}  {error}")
    return lines


def add_commands(group: click.Group) -> None:
    from balans_edge import cli as _cli

    def with_queues(config: Any, fn: Callable[[ExportRepository], Awaitable[T]]) -> T:
        """``fn`` with the plugin's repository on the configured storage, opened (and
        migrated, the plugin's tables included) for the call."""

        async def run(storage: SqlGateway) -> T:
            return await fn(ExportRepository(storage))

        return _cli.run_async(lambda: _cli.with_storage(config, run))

    def setup(config_path: Path | None) -> tuple[Any, ExportConfig]:
        _, config = _cli.prepare(config_path)
        return config, config.plugins["export"]

    @group.command("status")
    @_cli.CONFIG_OPTION
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    def status_command(config_path: Path | None, as_json: bool) -> None:
        """Every export target's queue depth, oldest point, sent, retries, dead letters, dropped, last error."""
        config, export = setup(config_path)
        rows = with_queues(config, lambda q: q.state())
        configured = {t.name: t for t in export.targets}
        now = time.time()
        statuses = [target_status(r, configured.get(r["name"]), now) for r in rows]
        if as_json:  # the names and states of GET /api/v1/export/targets (status.py)
            click.echo(json.dumps({"targets": statuses}, indent=2, ensure_ascii=False))
            return
        if not rows:
            click.echo("no export targets (configure [[plugins.export.targets]] and start the server)")
            return
        click.echo("\n".join(_status_lines(statuses)))
        stale = [s["target"] for s in statuses if s["state"] == "unconfigured" and s["kinds"]]
        if stale:
            click.echo(f"\n{', '.join(stale)}: in the database and still collecting, but not in this configuration; "
                       "`balans-edge export drop NAME` removes a target for good.")

    @group.command("backfill")
    @_cli.CONFIG_OPTION
    @click.option("--from", "from_", required=True, help="Start (ISO-8601, UTC unless an offset is given).")
    @click.option("--to", "to", required=True, help="End, exclusive.")
    @click.option("--target", "names", multiple=True, help="Only this target (repeatable; default: all enabled).")
    @click.option("--kind", "kinds", multiple=True, type=click.Choice(EXPORT_KINDS),
                  help="Only this kind (repeatable; default: each target's kinds).")
    @click.option("--wait", "wait_s", type=float, default=300.0, show_default=True,
                  help="How long to wait for a full queue to drain before giving up.")
    def backfill_command(config_path: Path | None, from_: str, to: str, names: tuple[str, ...],
                         kinds: tuple[str, ...], wait_s: float) -> None:
        """Queue stored history for export (the running server sends it)."""
        config, export = setup(config_path)
        t0, t1 = _cli.parse_time_option(from_, "--from"), _cli.parse_time_option(to, "--to")
        if t1 <= t0:
            raise click.BadParameter("must be later than --from", param_hint="--to")
        by_name = {t.name: t for t in export.targets}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise click.BadParameter(f"no target {unknown[0]!r} (configured: {', '.join(by_name) or 'none'})",
                                     param_hint="--target")
        targets = [by_name[n] for n in names] if names else [t for t in export.targets if t.enabled]
        if not targets:
            raise click.ClickException("no enabled export target is configured")
        tz = ZoneInfo(config.site.timezone)
        total: dict[str, dict[str, int]] = {}
        for target in targets:
            chosen = list(kinds) or list(target.kinds)

            async def run(queues: ExportRepository, target: TargetConfig = target, chosen: list[str] = chosen) -> Any:
                return await backfill(queues, export, tz, [target], chosen, t0, t1, wait_s)

            total.update(with_queues(config, run))
        for name, per_kind in total.items():
            click.echo(f"{name}: queued " + ", ".join(f"{n:,} {k}" for k, n in per_kind.items()))

    @group.command("dead-letters")
    @_cli.CONFIG_OPTION
    @click.option("--target", default=None, help="Only this target.")
    @click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True)
    @click.option("--lines", "show_lines", is_flag=True, help="Print the refused line protocol too.")
    def dead_letters_command(config_path: Path | None, target: str | None, limit: int, show_lines: bool) -> None:
        """Batches a target refused for good (HTTP 400, 422...), newest first."""
        config, _ = setup(config_path)
        rows = with_queues(config, lambda q: q.dead_letters(target, limit))
        if not rows:
            click.echo("no dead letters")
            return
        for r in rows:
            again = " (to be sent again)" if r["resend"] else ""
            when = iso(r["t"]) if r["t"] else "-"
            click.echo(f"#{r['id']} {r['target']} {when} HTTP {r['status']} {r['points']} point(s): "
                       f"{r['message']}{again}")
            if show_lines:
                click.echo("  " + r["lines"].replace("\n", "\n  "))

    @group.command("resend")
    @_cli.CONFIG_OPTION
    @click.option("--target", default=None, help="Only this target's dead letters.")
    @click.option("--id", "ids", type=int, multiple=True, help="Only this dead letter (repeatable).")
    def resend_command(config_path: Path | None, target: str | None, ids: tuple[int, ...]) -> None:
        """Send dead letters again once the target is fixed; the running server sends them before its queue."""
        config, export = setup(config_path)
        if target is not None and target not in {t.name for t in export.targets}:
            raise click.BadParameter(f"no export target {target!r}", param_hint="--target")
        marked = with_queues(config, lambda q: q.resend(target, list(ids) or None))
        click.echo(f"{marked} dead letter(s) marked to be sent again")

    @group.command("drop")
    @_cli.CONFIG_OPTION
    @click.argument("name")
    @click.option("--yes", is_flag=True, help="Really discard the target's queued points and dead letters.")
    def drop_command(config_path: Path | None, name: str, yes: bool) -> None:
        """Remove a target from the database: stop collecting for it, discard its queue and dead letters."""
        config, export = setup(config_path)
        if not yes:
            raise click.ClickException(f"this discards every point queued for {name}: add --yes")

        discarded = with_queues(config, lambda q: q.remove(name))
        click.echo(f"{name}: removed, {discarded:,} queued point(s) discarded")
        if name in {t.name for t in export.targets}:
            click.echo(f"note: {name} is still configured; the server collects for it again when it starts")
