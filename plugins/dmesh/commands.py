"""Commands to radio modules through their concentrator, tracked until their result.

A COMMAND frame goes out on the concentrator's link with a command id, the
concentrator acknowledges it on receipt (transport ACK), and the outcome
arrives later, possibly minutes later through 30 hops, in a COMMAND_RESULT
frame. ``DmeshCommands`` keeps a future per (concentrator id, command id)
that the session resolves once the result is stored; the host gives up after
``command_timeout_s``. A result that arrives after a reconnect still counts:
the concentrator keeps its COMMAND_RESULT frames until they are ACKed.

Every command comes through the actuation service, which audits it in the
``commands`` journal: valve and relay commands for meters, ping, reporting
interval and profile requests for ``module:<id>``, firmware pushes for
``concentrator:<id>``, all executed by ``DmeshActuator``. The journal id is
the command id on the wire, so ids are never reused across restarts and a
stored COMMAND_RESULT names its audit record; a result that arrives after the
command failed is recorded with ``ActuationService.settle``. ``DmeshCommands``
also back-fills the hours a concentrator's meters miss after it logs in.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from balans_edge.core.components import Command, CommandCode, CommandOutcome
from balans_edge.core.tasks import cancel
from balans_edge.core.times import HOUR, hour_ceil, hour_floor, iso
from balans_edge.plugins.dmesh import codec
from balans_edge.plugins.dmesh.codec import CommandResult, CommandResultCode
from balans_edge.plugins.dmesh.session import CommandRefused

if TYPE_CHECKING:
    from balans_edge.plugins.dmesh.driver import DmeshDriver

log = logging.getLogger(__name__)

MAX_PROFILE_HOURS = 168
BACKFILL_CONCURRENCY = 4
"""Profile requests of one concentrator in flight at once (the radio network is slow)."""

ACTUATING = {
    CommandCode.VALVE_CLOSE: (codec.CommandCode.VALVE_CLOSE, "valve"),
    CommandCode.VALVE_OPEN: (codec.CommandCode.VALVE_OPEN, "valve"),
    CommandCode.RELAY_OFF: (codec.CommandCode.RELAY_OFF, "relay"),
    CommandCode.RELAY_ON: (codec.CommandCode.RELAY_ON, "relay"),
}
"""Actuation command -> (DMesh command code, meter flag it needs)."""

MODULE_CODES = {
    CommandCode.PING: codec.CommandCode.PING_MODULE,
    CommandCode.SET_INTERVAL: codec.CommandCode.SET_INTERVAL,
    CommandCode.PROFILE_REQUEST: codec.CommandCode.PROFILE_REQUEST,
}
"""Commands to a radio module (target ``module:<id>``) that move no valve or relay -> DMesh command code."""

STATUS_NAMES = {5: "VALVE_CLOSED", 8: "RELAY_OFF"}


@dataclass(frozen=True, slots=True)
class Tracked:
    """The host's view of one command's outcome."""

    ok: bool
    detail: str
    result: int | None = None
    status: int | None = None


def wire_args(command: Command) -> tuple[int, ...]:
    """The arguments of a module command's COMMAND frame, from its ``args``."""
    if command.code == CommandCode.SET_INTERVAL:
        return (int(command.args["seconds"]),)
    if command.code == CommandCode.PROFILE_REQUEST:
        return int(command.args["channel"]), int(command.args["from"]), int(command.args["to"])
    return ()


def describe(code: CommandCode, args: dict[str, int]) -> str:
    if code == CommandCode.PROFILE_REQUEST:
        return f"channel {args['channel']} {iso(args['from'])}..{iso(args['to'])}"
    if code == CommandCode.SET_INTERVAL:
        return f"{args['seconds']} s"
    return ""


def module_command(module_id: int, code: CommandCode, args: dict[str, int], *, requested_by: str,
                   reason: str) -> Command:
    """A ping, reporting interval or profile request for a radio module, to give
    to the actuation service: ``args`` as ``wire_args`` reads them (``seconds``;
    ``channel``, ``from``, ``to``)."""
    if code not in MODULE_CODES:
        raise ValueError(f"{code} is not a module command")
    return Command(f"module:{module_id}", code, requested_by, reason, detail=describe(code, args), args=dict(args))


def device_id(target: str, kind: str) -> int | None:
    """N of a ``kind:N`` target (``module:1001``, ``concentrator:7``), else None."""
    prefix, _, number = target.partition(":")
    return int(number) if prefix == kind and number.isdigit() else None


def missing_hours(ts: np.ndarray, t0: int, t1: int, tolerance: int) -> np.ndarray:
    """Hour boundaries t0 <= h <= t1 without a reading within ``tolerance`` s.

    ``ts`` are the meter's reading times, sorted; t0 and t1 are hour-aligned."""
    hours = np.arange(t0, t1 + 1, HOUR, dtype=np.int64)
    if len(ts) == 0:
        return hours
    i = np.searchsorted(ts, hours)
    after = np.abs(ts[np.minimum(i, len(ts) - 1)] - hours)
    before = np.abs(hours - ts[np.maximum(i - 1, 0)])
    return hours[np.minimum(after, before) > tolerance]


def hour_ranges(hours: np.ndarray, longest: int = MAX_PROFILE_HOURS) -> list[tuple[int, int]]:
    """Contiguous runs of hour boundaries as [from, to) ranges of at most ``longest`` hours."""
    if len(hours) == 0:
        return []
    breaks = np.flatnonzero(np.diff(hours) != HOUR) + 1
    out = []
    for run in np.split(hours, breaks):
        for k in range(0, len(run), longest):
            part = run[k : k + longest]
            out.append((int(part[0]), int(part[-1]) + HOUR))
    return out


def describe_result(result: CommandResult) -> str:
    """A module's answer as the audit shows it: ``DONE (VALVE_CLOSED)``."""
    try:
        name = CommandResultCode(result.result).name
    except ValueError:
        name = f"result {result.result}"
    flags = [n for bit, n in STATUS_NAMES.items() if result.status >> bit & 1]
    return name + (f" ({', '.join(flags)})" if flags else "")


class DmeshCommands:
    """Send commands to modules and track them; back-fill after a login."""

    def __init__(self, driver: DmeshDriver) -> None:
        self.driver = driver
        self.context = driver.context
        self.config = driver.config
        self._pending: dict[tuple[int, int], asyncio.Future[CommandResult]] = {}
        self._backfills: dict[int, asyncio.Task[None]] = {}
        self._late: set[asyncio.Task[None]] = set()

    async def stop(self) -> None:
        for task in [*self._backfills.values(), *self._late]:
            await cancel(task)
        self._backfills.clear()

    # tracking ---------------------------------------------------------------

    def result_arrived(self, concentrator_id: int, result: CommandResult) -> None:
        """Called by a session once a COMMAND_RESULT is stored."""
        fut = self._pending.get((concentrator_id, result.command_id))
        if fut is not None and not fut.done():
            fut.set_result(result)
            return
        task = asyncio.create_task(self._late_result(concentrator_id, result))
        self._late.add(task)
        task.add_done_callback(self._late.discard)

    async def _late_result(self, concentrator_id: int, result: CommandResult) -> None:
        """A result nobody waits for: the command timed out, or the server stopped
        while it ran. Its audit record said failed; the module's answer is the
        truth, so the actuation service records it (a valve an operator believes
        open may have closed after all) and tells the observers again. Only for
        a command sent through this concentrator."""
        actuation = self.context.commands
        try:
            command = await actuation.get(result.command_id)
            if command is None or command.outcome != "failed" or command.detail.endswith(describe_result(result)):
                return  # not ours to correct, or the same answer sent again
            if await self._concentrator_of(command.target) != concentrator_id:
                log.warning("dmesh: concentrator %d sent a result for command #%d, which it was not sent",
                            concentrator_id, result.command_id)
                return
            ok = result.result == CommandResultCode.DONE
            await actuation.settle(result.command_id, "done" if ok else "failed",
                                   f"{command.detail}; a late result arrived: {describe_result(result)}")
            log.warning("dmesh: command #%d (%s %s) answered late: %s", result.command_id, command.code,
                        command.target, describe_result(result))
        except Exception:
            log.exception("dmesh: the late result of command #%d was not recorded", result.command_id)

    async def _concentrator_of(self, target: str) -> int | None:
        """The concentrator a command for ``target`` (a meter, or ``module:ID``) goes through."""
        queries = self.context.queries
        module_id = device_id(target, "module")
        if module_id is None:
            meter = await queries.registry_get("meters", target)
            module_id = meter.module_id if meter is not None else None
        module = await queries.registry_get("modules", module_id) if module_id is not None else None
        return module.concentrator_id if module is not None else None

    async def track(
        self, concentrator_id: int, command_id: int, module_id: int, code: int, args: tuple[int, ...] = ()
    ) -> Tracked:
        """Send one COMMAND and wait for its transport ACK, then for its result."""
        session = self.driver.sessions().get(concentrator_id)
        if session is None or session.closing:
            return Tracked(False, f"concentrator {concentrator_id} is not connected")
        timeout = self.config.command_timeout_s
        key = (concentrator_id, command_id)
        fut: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        try:
            async with asyncio.timeout(timeout):
                try:
                    await session.request(codec.Command(command_id, module_id, code, args))
                except ConnectionError:
                    return Tracked(False, f"concentrator {concentrator_id} disconnected before it acknowledged")
                result = await fut
        except TimeoutError:
            return Tracked(False, f"timeout after {timeout:g} s")
        except CommandRefused as exc:
            return Tracked(False, str(exc))
        finally:
            self._pending.pop(key, None)
        return Tracked(result.result == CommandResultCode.DONE, describe_result(result), result.result, result.status)

    # module commands ----------------------------------------------------------

    async def execute_module(self, command: Command) -> CommandOutcome:
        """Send a ping, reporting interval or profile request (audited by the
        actuation service, which gives it its id) and track it."""
        module_id = device_id(command.target, "module")
        if module_id is None or command.id is None:  # pragma: no cover - DmeshActuator.handles checked
            raise ValueError(f"not a module command: {command.target}")
        module = await self.context.registry.registry_get("modules", module_id)
        if module is None or module.concentrator_id is None:
            return CommandOutcome(False, f"module {module_id} is not registered on a concentrator")
        tracked = await self.track(module.concentrator_id, command.id, module_id, MODULE_CODES[command.code],
                                   wire_args(command))
        return CommandOutcome(tracked.ok, tracked.detail)

    # back-fill ----------------------------------------------------------------

    def logged_in(self, concentrator_id: int) -> None:
        """Start (or restart) the back-fill of a concentrator that just logged in."""
        if not self.config.backfill:
            return
        old = self._backfills.pop(concentrator_id, None)
        if old is not None:
            old.cancel()
        task = asyncio.create_task(self._backfill(concentrator_id), name=f"dmesh-backfill-{concentrator_id}")
        self._backfills[concentrator_id] = task
        task.add_done_callback(lambda t: self._backfills.pop(concentrator_id, None) if
                               self._backfills.get(concentrator_id) is t else None)

    async def gaps(self, concentrator_id: int, now: float | None = None) -> list[tuple[int, int, int, int]]:
        """(module_id, channel, from, to) of the hours the concentrator's meters miss."""
        queries = self.context.queries
        now = time.time() if now is None else now
        tolerance = int(self.context.site.interval_tolerance_s)
        end = hour_floor(int(now) - tolerance)
        start = end - self.config.backfill_days * 24 * HOUR
        modules = {m.module_id for m in await queries.registry_list("modules") if m.concentrator_id == concentrator_id}
        out = []
        for key, meter in await queries.meters_by_key():
            if meter.module_id not in modules or meter.channel is None:
                continue
            t0 = max(start, hour_ceil(meter.install_time))
            t1 = end if meter.removed_time is None else min(end, hour_floor(meter.removed_time))
            if t1 < t0:
                continue
            rows = await queries.readings(key, t0 - tolerance, t1 + tolerance + 1)
            for lo, hi in hour_ranges(missing_hours(rows.ts, t0, t1, tolerance)):
                out.append((meter.module_id, meter.channel, lo, hi))
        return out

    async def _backfill(self, concentrator_id: int) -> None:
        # What the concentrator buffered during the outage comes first; it may fill the gaps.
        await asyncio.sleep(self.config.backfill_delay_s)
        try:
            gaps = await self.gaps(concentrator_id)
        except Exception:
            log.exception("dmesh: back-fill of concentrator %d: missing hours not found", concentrator_id)
            return
        if not gaps:
            return
        log.info("dmesh: concentrator %d: requesting %d profile(s) of missing hours", concentrator_id, len(gaps))
        queue: asyncio.Queue[tuple[int, int, int, int]] = asyncio.Queue()
        for gap in gaps:
            queue.put_nowait(gap)

        async def worker() -> None:
            while not queue.empty():
                module_id, channel, lo, hi = queue.get_nowait()
                hours = (hi - lo) // HOUR
                try:
                    done = await self.context.commands.execute(module_command(
                        module_id, CommandCode.PROFILE_REQUEST, {"channel": channel, "from": lo, "to": hi},
                        requested_by="dmesh:backfill",
                        reason=f"back-fill of {hours} missing hour(s) after concentrator {concentrator_id} logged in",
                    ))
                except Exception:
                    log.exception("dmesh: back-fill request for module %d failed", module_id)
                    continue
                if done.outcome != "done":
                    log.warning("dmesh: back-fill of module %d channel %d: %s", module_id, channel, done.detail)

        workers = [asyncio.create_task(worker()) for _ in range(min(BACKFILL_CONCURRENCY, len(gaps)))]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                await cancel(w)


class DmeshActuator:
    """Every command the DMesh driver executes: valve and relay commands for
    meters on modules served by a concentrator, ping, reporting interval and
    profile requests for ``module:<id>``, firmware pushes for ``concentrator:<id>``."""

    name = "dmesh"

    def __init__(self, driver: DmeshDriver) -> None:
        self.driver = driver

    def owns(self, target: str) -> bool:
        """Radio modules and concentrators are driven by nothing else."""
        return device_id(target, "module") is not None or device_id(target, "concentrator") is not None

    async def handles(self, command: Command) -> bool:
        """Valve and relay commands for meters on a module of a concentrator (a
        valve elsewhere is left to the actuator that drives it); module commands
        for a module; a verified image for a concentrator."""
        if command.code in MODULE_CODES:
            return device_id(command.target, "module") is not None
        if command.code == CommandCode.FIRMWARE_PUSH:
            return self.driver.firmware.can_push(command)
        if command.code not in ACTUATING:
            return False
        queries = self.driver.context.queries
        meter = await queries.registry_get("meters", command.target)
        if meter is None or meter.module_id is None:
            return False
        module = await queries.registry_get("modules", meter.module_id)
        return module is not None and module.concentrator_id is not None

    async def execute(self, command: Command) -> CommandOutcome:
        if command.code in MODULE_CODES:
            return await self.driver.commands.execute_module(command)
        if command.code == CommandCode.FIRMWARE_PUSH:
            return await self.driver.firmware.transfer(command)
        code, flag = ACTUATING[command.code]
        queries = self.driver.context.queries
        meter = await queries.registry_get("meters", command.target)
        if meter is None:
            return CommandOutcome(False, f"meter {command.target} is not in the registry")
        if flag not in meter.flags:
            return CommandOutcome(False, f"meter {command.target} has no {flag} (flag {flag!r} not set)")
        module = await queries.registry_get("modules", meter.module_id) if meter.module_id is not None else None
        if module is None or module.concentrator_id is None:
            return CommandOutcome(False, f"meter {command.target} is not on a module of a DMesh concentrator")
        if command.id is None:  # pragma: no cover - the actuation service audits before it executes
            raise ValueError("the command has no journal id")
        outcome = await self.driver.commands.track(module.concentrator_id, command.id, module.module_id, code)
        return CommandOutcome(outcome.ok, f"module {module.module_id}: {outcome.detail}")
