"""The actuation service: the only way a command reaches a valve, relay or pump.

Every command is routed to the actuator that handles it and written to the
``commands`` journal with who asked, when, why and the outcome, whether it
was executed, refused or failed. HTTP handlers, OPC UA methods, Modbus coils
and control policies all call ``execute``; none talks to an actuator directly.
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
        device's late answer may still correct it: see the DMesh commands)."""
        for c in await self.storage.settle_pending_commands(INTERRUPTED):
            log.warning("command #%d (%s %s, asked by %s) was interrupted by a stop of the server: marked failed",
                        c["id"], c["code"], c["target"], c["requested_by"])

    def add(self, actuator: Actuator) -> None:
        self.actuators.append(actuator)

    async def route(self, command: Command) -> Actuator | None:
        """The actuator that executes ``command``.

        An actuator may implement ``owns(target) -> bool`` to say that it drives
        that target (a Modbus valve, a pump). A command for an owned target
        goes only to its owners, and is refused when none of them handles its
        code; it never falls through to a generic actuator that accepts any
        valve or relay command. Other commands go to the first actuator that
        handles them, in registration order. ``handles`` may be a coroutine
        (an actuator that looks the target up in the registry).
        """
        owners = [a for a in self.actuators if _owns(a, command.target)]
        for actuator in owners or self.actuators:
            if await _handles(actuator, command):
                return actuator
        return None

    async def execute(self, command: Command) -> Command:
        """Execute and audit one command; return it with id and outcome."""
        if not command.requested_by or not command.reason:
            raise ValueError("a command needs requested_by and reason for the audit")
        command = dataclasses.replace(command, t=command.t or int(self.clock()), outcome="pending")
        # Audit first: a command that reaches a device is on record even if the
        # process dies before the outcome is known.
        record = dataclasses.asdict(command)
        record["code"] = str(command.code)
        command = dataclasses.replace(command, id=await self.storage.journal_append("commands", record))
        actuator = await self.route(command)
        if actuator is None:
            owners = ", ".join(a.name for a in self.actuators if _owns(a, command.target))
            outcome, detail = "refused", (f"{command.target} is driven by {owners}, which takes no {command.code}"
                                          if owners else f"no actuator handles {command.code} for {command.target}")
        else:
            try:
                result = await actuator.execute(command)
            except Exception as exc:
                log.exception("actuator %s failed", actuator.name)
                outcome, detail = "failed", f"{actuator.name}: {type(exc).__name__}: {exc}"
            else:
                outcome = "done" if result.ok else "failed"
                detail = f"{actuator.name}: {result.detail}" if result.detail else actuator.name
        command = dataclasses.replace(command, outcome=outcome, detail=detail)
        await self.storage.journal_update("commands", command.id, {"outcome": outcome, "detail": detail})
        if self.observer is not None:
            await self.observer(command)
        return command


async def _handles(actuator: Actuator, command: Command) -> bool:
    answer = actuator.handles(command)
    return bool(await answer) if inspect.isawaitable(answer) else bool(answer)


def _owns(actuator: Actuator, target: str) -> bool:
    owns = getattr(actuator, "owns", None)
    return bool(owns is not None and owns(target))
