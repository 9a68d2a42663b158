"""``balans-edge dmesh simulate``: the simulated site as its own process.

It dials in to a running server's DMesh driver as the site's concentrators,
with the keys and the ``[plugins.dmesh.simulator]`` site of the same
configuration file: first the history, fast-forward (a month of hourly data
in seconds, each frame ACKed only once stored), then live reports until
interrupted. It seeds databases for tests and benchmarks, and lets the
server be tested with the simulator outside its process (the server's own
simulator should then be disabled: both would claim the same concentrators).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import time
from pathlib import Path
from typing import Any

import click

from balans_edge import cli as _cli
from balans_edge.core.times import HOUR
from balans_edge.plugins.dmesh.scenario import ScenarioData
from balans_edge.plugins.dmesh.simulator import SiteModel, SiteRunner, TcpDelivery, install_time


def truth_document(site: SiteModel, until: int) -> dict[str, Any]:
    """The ground truth of the site up to time ``until``, for scoring what the
    server finds: what each fault really did and each meter's true and
    registered volume."""
    d: ScenarioData = site.data
    hours = min((until - site.install_time) // HOUR, len(d.ts) - 1)
    t = d.truth
    return {
        "install_time": site.install_time,
        "until": site.install_time + hours * HOUR,
        "faults": [
            {
                "kind": type(ft.fault).__name__,
                "meter_id": ft.meter_id,
                "fault": dataclasses.asdict(ft.fault),
                "volume_m3": round(float(ft.hourly_m3[:hours].sum()), 6),
            }
            for ft in t.faults
        ],
        "network_loss_m3": {f"B{b + 1}": round(float(v), 6) for b, v in enumerate(t.network_loss_m3[:, :hours].sum(1))},
        "meters": {
            m.meter_id: {"true_m3": round(float(t.consumption_m3[i, :hours].sum()), 6),
                         "registered_m3": round(float(t.metered_m3[i, :hours].sum()), 6)}
            for i, m in enumerate(d.meters)
        },
    }


async def simulate(config: Any, hours: int | None, live: bool, register: bool, host: str | None,
                   port: int | None, truth: Path | None) -> None:
    dmesh = config.plugins["dmesh"]
    sim = dmesh.simulator
    hours = sim.history_hours if hours is None else hours
    now = int(time.time())

    async def prepare(storage: Any) -> SiteModel:
        site = SiteModel(sim, await install_time(storage, now, hours), _utc_offset(config))
        site.ensure(now)
        if register:
            await storage.registry_apply(site.registry())
        return site

    site = await _cli.with_storage(config, prepare)
    if site.install_time > now - hours * HOUR:
        hours = (now - site.install_time) // HOUR  # not before the installation
    from balans_edge.plugins.dmesh.plugin import concentrator_keys

    tcp = TcpDelivery(site, concentrator_keys(dmesh), lambda: port or dmesh.port, host or dmesh.host)
    await tcp.start()
    try:
        runner = SiteRunner(site, tcp)
        started = time.monotonic()
        sent = await runner.history(hours)
        await tcp.drained()
        elapsed = time.monotonic() - started
        click.echo(f"history: {hours + 1} hours, {sent:,} readings of {len(site.data.meters)} meters stored "
                   f"in {elapsed:.1f} s ({sent / max(elapsed, 1e-9):,.0f} readings/s)")
        if truth is not None:
            text = json.dumps(truth_document(site, now), indent=2) + "\n"
            await asyncio.to_thread(truth.write_text, text, encoding="utf-8")
            click.echo(f"ground truth: {truth}")
        if live:
            click.echo(f"live: a report every {sim.interval_s} s; Ctrl-C stops")
            await _until_signal(runner.live(sim.interval_s))
    finally:
        await tcp.stop()


def _utc_offset(config: Any) -> int:
    from balans_edge.plugins.dmesh.plugin import utc_offset_h

    return utc_offset_h(config.site.timezone)


async def _until_signal(work: Any) -> None:
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task


def add_commands(group: click.Group) -> None:
    @group.command("simulate")
    @_cli.CONFIG_OPTION
    @click.option("--hours", type=click.IntRange(0, 24 * 366), default=None,
                  help="Hours of history to send first (default: the simulator's history_hours).")
    @click.option("--live/--no-live", default=True, show_default=True, help="Keep reporting after the history.")
    @click.option("--register/--no-register", default=True, show_default=True,
                  help="Write the site's concentrators, modules, accounts and meters into the configured storage.")
    @click.option("--host", default=None, help="The driver's address (default: [plugins.dmesh] host).")
    @click.option("--port", type=click.IntRange(1, 65535), default=None,
                  help="The driver's port (default: [plugins.dmesh] port).")
    @click.option("--truth", type=click.Path(dir_okay=False, path_type=Path), default=None,
                  help="Write the ground truth of the injected faults to this JSON file.")
    def simulate_command(config_path: Path | None, hours: int | None, live: bool, register: bool,
                         host: str | None, port: int | None, truth: Path | None) -> None:
        """Run the simulated site of [plugins.dmesh.simulator] against a running server."""
        from balans_edge.plugins.dmesh.concentrator import Refused

        _, config = _cli.prepare(config_path)
        if config.plugins.get("dmesh") is None:
            raise click.ClickException("the dmesh plugin is not enabled in this configuration")
        try:
            _cli.run_async(lambda: simulate(config, hours, live, register, host, port, truth))
        except (Refused, OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from None
