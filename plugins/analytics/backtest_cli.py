"""``balans-edge analytics backtest``: the detectors replayed over stored history,
every event with when it was first reported, scored against a truth file.

The replay is ``core.analytics.backtest``, the scoring ``core.analytics.backtest_truth``;
this module reads the options, loads the group's history once (read-only: no
finding, alarm or consumption is written) and prints the result as a table,
JSON or CSV."""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from balans_edge.core.analytics.backtest import (
    Replay,
    ReplayedEvent,
    detector_window,
    load_replay_data,
    replay,
    run_times,
)
from balans_edge.core.analytics.backtest_truth import (
    DEFAULT_DEADLINE_S,
    Scores,
    TrueEvent,
    TruthError,
    group_subjects,
    read_truth,
    score,
)
from balans_edge.core.times import DAY, HOUR

if TYPE_CHECKING:
    import click

FORMATS = ("table", "json", "csv")
_DURATION = re.compile(r"\s*(\d+)\s*([smhd]?)\s*")
_UNITS = {"": 1, "s": 1, "m": 60, "h": HOUR, "d": DAY}

HELP = """Replay the detectors over a group's stored history as the scheduler would have
run them: at each step from FROM to TO (every hour by default) the detectors see
only the window_days of hours over by then, and their reports become events by
the findings' own rules, in memory: nothing is written to the database.

Prints every event: detector, kind, subject, start, first report and the delay
from its start, rate (unit per hour) and volume at the first report and at the
end, and its end if it ended. FROM and TO are ISO-8601 dates or times (the
site's local time when they carry no offset) or unix seconds; the history read
starts window_days before FROM.

With --truth FILE (CSV, a line per true event: subject,kind,start[,end]; the
subject is the group's id or a meter's; an optional header line names the
columns; '#' starts a comment) it also prints the delay per true event,
precision, recall, F1 and false episodes per month. Matching rule: a reported
event matches a true event of the same subject when it is first reported
within --deadline after the true start (kinds are not compared). Precision is
the share of reported events that match a true one, recall the share of true
events starting within the replay that some report matches; a report that
matches none is a false episode (docs/analytics.md, "Backtests")."""


def parse_duration(raw: str, option: str) -> int:
    """Seconds of ``30m``, ``1h``, ``7d`` or plain seconds; a usage error naming the option otherwise."""
    import click

    m = _DURATION.fullmatch(raw or "")
    if m is None or int(m[1]) <= 0:
        raise click.BadParameter(f"expected a duration such as 1h, 6h or 7d, got {raw!r}", param_hint=option)
    return int(m[1]) * _UNITS[m[2]]


def _local(t: int | None, tz: ZoneInfo, iso: bool = False) -> str:
    if t is None:
        return ""
    moment = datetime.fromtimestamp(t, tz)
    return moment.isoformat() if iso else moment.strftime("%Y-%m-%d %H:%M")


def _number(x: float | None, digits: int = 3) -> str:
    return "" if x is None else f"{x:.{digits}f}"


def _hours(seconds: float | None) -> str:
    return "" if seconds is None else f"{seconds / HOUR:.1f}"


def _in_hours(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds / HOUR:.1f} h"


def _span(seconds: int) -> str:
    """A step or window as people say it: ``1 h``, ``6 h``, ``14 d``."""
    return f"{seconds // DAY} d" if seconds % DAY == 0 else f"{seconds / HOUR:g} h"


EVENT_COLUMNS = ("detector", "kind", "subject", "start", "first_reported", "delay_h", "rate_first", "volume_first",
                 "rate_end", "volume_end", "end")


def _event_cells(e: ReplayedEvent, tz: ZoneInfo, iso: bool) -> list[str]:
    return [e.detector, e.kind, e.subject, _local(e.start, tz, iso), _local(e.first_reported, tz, iso),
            _hours(e.delay), _number(e.first_rate, 4), _number(e.first_volume), _number(e.rate, 4),
            _number(e.volume), _local(e.end, tz, iso)]


TRUTH_COLUMNS = ("line", "subject", "kind", "start", "end", "first_reported", "delay_h", "detector")


def _truth_cells(scores: Scores, tz: ZoneInfo, iso: bool) -> list[list[str]]:
    rows = []
    for o in scores.outcomes:
        t, e = o.truth, o.event
        first = _local(e.first_reported, tz, iso) if e else "" if iso else "missed"
        rows.append([str(t.line), t.subject, t.kind, _local(t.start, tz, iso), _local(t.end, tz, iso), first,
                     _hours(o.delay), e.detector if e else ""])
    return rows


def _metrics(scores: Scores) -> list[tuple[str, str]]:
    rows = [("true_events", str(len(scores.outcomes))), ("detected", str(scores.detected)),
            ("precision", _number(scores.precision)), ("recall", _number(scores.recall)), ("f1", _number(scores.f1)),
            ("false_episodes", str(scores.false_episodes)), ("months", _number(scores.months)),
            ("false_per_month", _number(scores.false_per_month, 2)),
            ("median_delay_h", _hours(scores.median_delay_s)), ("deadline_h", _hours(scores.deadline_s)),
            ("left_out", str(scores.left_out))]
    for kind, k in scores.by_kind.items():
        rows += [(f"recall.{kind}", _number(k.recall)), (f"median_delay_h.{kind}", _hours(k.median_delay_s))]
    return rows


def _aligned(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def render_table(result: Replay, scores: Scores | None, tz: ZoneInfo, unit: str) -> str:
    out = [f"group {result.group_id}: {result.runs} runs every {_span(result.step_s)} from "
           f"{_local(result.t_from, tz)} to {_local(result.t_to, tz)} ({tz.key}), {_span(result.window_s)} windows; "
           f"detectors {', '.join(result.detectors)}; {sum(result.seconds.values()):.1f} s",
           f"rates in {unit}/h, volumes in {unit}, times local"]
    if result.events:
        out.append(_aligned([list(EVENT_COLUMNS), *(_event_cells(e, tz, False) for e in result.events)]))
    else:
        out.append("no events")
    for name, count in sorted(result.failures.items()):
        out.append(f"warning: detector {name} failed in {count} runs")
    if scores is not None:
        out.append(f"\ntrue events (matched when first reported within {_span(scores.deadline_s)} of their start):")
        out.append(_aligned([list(TRUTH_COLUMNS), *_truth_cells(scores, tz, False)]) if scores.outcomes
                   else "none in the replayed period")
        m = dict(_metrics(scores))
        out.append(f"precision {m['precision'] or '-'}  recall {m['recall'] or '-'}  F1 {m['f1'] or '-'}  "
                   f"false episodes {scores.false_episodes} ({m['false_per_month'] or '-'} a month over "
                   f"{scores.months:.2f} months)  median delay {_in_hours(scores.median_delay_s)}")
        for kind, k in scores.by_kind.items():
            out.append(f"  {kind}: {k.detected}/{k.true_events} detected, median delay {_in_hours(k.median_delay_s)}")
        if scores.left_out:
            out.append(f"{scores.left_out} true events of the file left out (other subjects, or outside the period)")
    return "\n".join(out)


def _event_json(e: ReplayedEvent, match: TrueEvent | None) -> dict[str, Any]:
    return {"detector": e.detector, "kind": e.kind, "subject": e.subject, "group": e.group_id,
            "severity": e.severity, "message": e.message, "start": e.start, "first_reported": e.first_reported,
            "delay_s": e.delay, "first": {"rate": e.first_rate, "volume": e.first_volume},
            "end_estimate": {"rate": e.rate, "volume": e.volume}, "last_reported": e.last_reported,
            "reports": e.reports, "end": e.end, "true_event_line": None if match is None else match.line}


def render_json(result: Replay, scores: Scores | None, tz: ZoneInfo, unit: str) -> str:
    matched = scores.matched if scores is not None else [None] * len(result.events)
    body: dict[str, Any] = {
        "group": result.group_id, "from": result.t_from, "to": result.t_to, "step_s": result.step_s,
        "window_s": result.window_s, "timezone": tz.key, "unit": unit, "detectors": result.detectors,
        "runs": result.runs, "seconds": {k: round(v, 3) for k, v in result.seconds.items()},
        "failures": result.failures,
        "events": [_event_json(e, m) for e, m in zip(result.events, matched, strict=True)],
    }
    if scores is not None:
        body["truth"] = [{"line": o.truth.line, "subject": o.truth.subject, "kind": o.truth.kind,
                          "start": o.truth.start, "end": o.truth.end, "detected": o.event is not None,
                          "first_reported": None if o.event is None else o.event.first_reported,
                          "delay_s": o.delay} for o in scores.outcomes]
        body["scores"] = {
            "deadline_s": scores.deadline_s, "true_events": len(scores.outcomes), "detected": scores.detected,
            "precision": scores.precision, "recall": scores.recall, "f1": scores.f1,
            "false_episodes": scores.false_episodes, "months": scores.months,
            "false_per_month": scores.false_per_month, "median_delay_s": scores.median_delay_s,
            "left_out": scores.left_out,
            "by_kind": {k: {"true_events": s.true_events, "detected": s.detected, "recall": s.recall,
                            "median_delay_s": s.median_delay_s} for k, s in scores.by_kind.items()},
        }
    return json.dumps(body, indent=2, ensure_ascii=False)


def render_csv(result: Replay, scores: Scores | None, tz: ZoneInfo, unit: str) -> str:
    """The events (times ISO-8601 in the site's timezone); with a truth file also the
    true event each matches, then, after a blank line each, the true events and the metrics."""
    buffer = io.StringIO()
    w = csv.writer(buffer, lineterminator="\n")
    extra = ["true_event_line"] if scores is not None else []
    w.writerow([*EVENT_COLUMNS, *extra])
    matched = scores.matched if scores is not None else [None] * len(result.events)
    for e, m in zip(result.events, matched, strict=True):
        w.writerow([*_event_cells(e, tz, True), *([] if scores is None else ["" if m is None else m.line])])
    if scores is not None:
        w.writerow([])
        w.writerows([list(TRUTH_COLUMNS), *_truth_cells(scores, tz, True)])
        w.writerow([])
        w.writerows([("metric", "value"), *_metrics(scores)])
    return buffer.getvalue().rstrip("\n")


RENDER = {"table": render_table, "json": render_json, "csv": render_csv}


def add_backtest_command(group: click.Group) -> None:
    import click

    from balans_edge import cli as _cli
    from balans_edge.core.times import parse_time
    from balans_edge.plugins.analytics.night_flow import NightFlowSource
    from balans_edge.plugins.analytics.plugin import DETECTOR_NAMES, NAME, AnalyticsConfig, build_detectors

    @group.command("backtest", help=HELP)
    @_cli.CONFIG_OPTION
    @click.option("--group", "group_id", required=True, help="The balance group to replay.")
    @click.option("--from", "t_from", required=True, help="The first run (ISO-8601 in the site's time, or unix s).")
    @click.option("--to", "t_to", required=True, help="The last run (ISO-8601 in the site's time, or unix s).")
    @click.option("--step", default="1h", show_default=True, help="Time between runs, whole hours (1h, 6h, 1d).")
    @click.option("--truth", "truth_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                  default=None, help="CSV of the true events (subject,kind,start[,end]) to score against.")
    @click.option("--deadline", default=f"{DEFAULT_DEADLINE_S // DAY}d", show_default=True,
                  help="A report matches a true event first reported within this after its start.")
    @click.option("--detectors", "names", default=None,
                  help=f"Comma-separated detectors (default: the configured ones): {', '.join(DETECTOR_NAMES)}.")
    @click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
    def backtest_command(config_path: Path | None, group_id: str, t_from: str, t_to: str, step: str,
                         truth_path: Path | None, deadline: str, names: str | None, fmt: str) -> None:
        _, config = _cli.prepare(config_path)
        tz = ZoneInfo(config.site.timezone)
        settings = config.plugins.get(NAME) or AnalyticsConfig()
        times = {}
        for option, raw in (("--from", t_from), ("--to", t_to)):
            try:
                times[option] = parse_time(raw, tz)
            except ValueError as exc:
                raise click.BadParameter(str(exc), param_hint=option) from None
        step_s = parse_duration(step, "--step")
        if step_s % HOUR:
            raise click.BadParameter(f"expected whole hours, got {step!r}", param_hint="--step")
        deadline_s = parse_duration(deadline, "--deadline")
        try:
            run_times(times["--from"], times["--to"], step_s)
        except ValueError:
            raise click.BadParameter("no run between --from (rounded up to an hour) and --to",
                                     param_hint="--to") from None
        try:
            source = NightFlowSource(settings.night_flow)
            detectors = build_detectors(settings, [n.strip() for n in names.split(",") if n.strip()] if names
                                        else None, source=source)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--detectors") from None
        truth = None
        if truth_path is not None:
            try:
                truth = read_truth(truth_path.read_text(encoding="utf-8"), tz, str(truth_path))
            except (TruthError, UnicodeDecodeError) as exc:
                raise click.ClickException(str(exc)) from None
        window_s = settings.window_days * DAY
        history_s = max(detector_window(d, window_s) for d in detectors)

        async def load(storage: Any) -> Any:
            source.database = storage  # the night-flow settings set through the API, as the server has them
            await source.load()
            try:
                return await load_replay_data(storage, group_id, times["--from"], times["--to"], tz, step_s,
                                              history_s)
            except KeyError:
                raise click.ClickException(f"group {group_id!r} is not in the registry") from None

        data = _cli.run_async(lambda: _cli.with_storage(config, load))
        result = replay(data, detectors, times["--from"], times["--to"], step_s=step_s, window_s=window_s)
        scores = None if truth is None else score(result, truth, group_subjects(data), deadline_s)
        click.echo(RENDER[fmt](result, scores, tz, data.group.unit))
        for name, count in sorted(result.failures.items()):
            if fmt != "table":
                click.echo(f"warning: detector {name} failed in {count} runs", err=True)
