"""The actuation service: the only way a command reaches a device.

Every command, whether it moves a valve, relay or pump or reconfigures or
queries a device (a radio module's ping, reporting interval or profile
request, a firmware push), is routed to the actuator that handles it and
written to the ``commands`` journal with who asked, when, why and the
outcome, whether it was executed, refused or failed. HTTP handlers, OPC UA
methods, Modbus coils, control policies and protocol drivers all call
``execute``; none talks to an actuator directly, and none writes the journal:
storage refuses ``commands`` to its generic journal methods, and only this
service calls ``command_append``/``command_update``.

An outcome that a device sends after ``execute`` returned (a radio module's
answer to a command that timed out on the host) is recorded with ``settle``.

The observer (the server's ``observe_commands`` hook) is called each time a
command's outcome is recorded: once when ``execute`` ends, and again for each
later ``settle``. Its last call for a command carries the final outcome, the
one the audit shows.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from collections.abc import Awaitable, Callable

from balans_edge.core.components import Actuator, Command
from balans_edge.core.storage import Storage

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: the server stopped before the outcome was known"


class ActuationService:
    def __init__(
        self,
        storage: Storage,
        observer: Callable[[Command], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.observer = observer
        self.clock = clock
        self.actuators: list[Actuator] = []

    async def settle_interrupted(self) -> None:
        """At start: commands of an earlier run whose outcome was never recorded
        are marked failed, so the audit does not show them running forever (a
        device's late answer may still correct it: ``settle``)."""
        for c in await self.storage.settle_pending_commands(INTERRUPTED):
            log.warning("command #%d (%s %s, asked by %s) was interrupted by a stop of the server: marked failed",
                        c["id"], c["code"], c["target"], c["requested_by"])

    def add(self, actuator: Actuator) -> None:
        self.actuators.append(actuator)

    async def route(self, command: Command) -> Actuator | None:
        """The actuator that executes ``command``.

        An actuator may implement ``owns(target) -> bool`` to say that it drives
        that target (a Modbus valve, a pump, a radio module). A command for an
        owned target goes only to its owners, and is refused when none of them
        handles its code; it never falls through to a generic actuator that
        accepts any valve or relay command. Other commands go to the first
        actuator that handles them, in registration order. ``handles`` may be a
        coroutine (an actuator that looks the target up in the registry).
        """
        owners = [a for a in self.actuators if _owns(a, command.target)]
        for actuator in owners or self.actuators:
            if await _handles(actuator, command):
                return actuator
        return None

    async def execute(self, command: Command) -> Command:
        """Execute and audit one command; return it with id and outcome.

        ``command.detail``, when given, says what exactly is asked (an
        interval, a firmware image): the audit shows it while the command runs,
        and the outcome's detail reads "actuator: what was asked: its answer"."""
        if not command.requested_by or not command.reason:
            raise ValueError("a command needs requested_by and reason for the audit")
        command = dataclasses.replace(command, t=command.t or int(self.clock()), id=None, outcome="pending")
        # Audit first: a command that reaches a device is on record even if the
        # process dies before the outcome is known.
        record = command.record()
        del record["id"]
        command = dataclasses.replace(command, id=await self.storage.command_append(record))
        actuator = await self.route(command)
        if actuator is None:
            owners = ", ".join(a.name for a in self.actuators if _owns(a, command.target))
            outcome, detail = "refused", _join(command.detail, (
                f"{command.target} is driven by {owners}, which takes no {command.code}" if owners
                else f"no actuator handles {command.code} for {command.target}"))
        else:
            try:
                result = await actuator.execute(command)
            except Exception as exc:
                log.exception("actuator %s failed", actuator.name)
                outcome = "failed"
                detail = _join(actuator.name, command.detail, f"{type(exc).__name__}: {exc}")
            else:
                outcome = result.outcome or ("done" if result.ok else "failed")
                detail = _join(actuator.name, command.detail, result.detail)
        return await self._record(command, outcome, detail)

    async def get(self, command_id: int) -> Command | None:
        """A command as the audit holds it now (without its ``args``), or None."""
        record = await self.storage.journal_get("commands", command_id)
        return Command.from_record(record) if record is not None else None

    async def settle(self, command_id: int, outcome: str, detail: str) -> Command | None:
        """Record an outcome that arrived after ``execute`` returned: a device's
        late answer to a command that timed out or was interrupted by a stop.
        The audit record takes ``outcome`` and ``detail`` (the whole detail, as
        the audit is to show it) and the observer is told again. None when there
        is no such command."""
        command = await self.get(command_id)
        if command is None:
            return None
        return await self._record(command, outcome, detail)

    async def _record(self, command: Command, outcome: str, detail: str) -> Command:
        if command.id is None:  # pragma: no cover - execute and settle give it one
            raise ValueError("the command has no audit id")
        command = dataclasses.replace(command, outcome=outcome, detail=detail)
        await self.storage.command_update(command.id, {"outcome": outcome, "detail": detail})
        if self.observer is not None:
            await self.observer(command)
        return command


def _join(*parts: str) -> str:
    return ": ".join(p for p in parts if p)


async def _handles(actuator: Actuator, command: Command) -> bool:
    answer = actuator.handles(command)
    return bool(await answer) if inspect.isawaitable(answer) else bool(answer)


def _owns(actuator: Actuator, target: str) -> bool:
    owns = getattr(actuator, "owns", None)
    return bool(owns is not None and owns(target))
