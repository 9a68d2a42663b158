"""The actuation service audits every command before and after it reaches a device."""

from __future__ import annotations

import pytest

from balans_edge.core.actuation import ActuationService
from balans_edge.core.components import Command, CommandCode, CommandOutcome


class Valve:
    name = "test-valve"

    def __init__(self, storage, fail: bool = False) -> None:
        self.storage = storage
        self.fail = fail
        self.seen_while_running: list[dict] = []

    def handles(self, command: Command) -> bool:
        return command.target.startswith("W-")

    async def execute(self, command: Command) -> CommandOutcome:
        self.seen_while_running = await self.storage.journal_list("commands")
        if self.fail:
            raise ConnectionError("no route to module 1002")
        return CommandOutcome(ok=True, detail="closed")


async def test_command_is_on_record_before_it_reaches_the_device(storage):
    observed: list[Command] = []

    async def observe(command: Command) -> None:
        observed.append(command)

    service = ActuationService(storage, observer=observe, clock=lambda: 1_390_176_000)
    valve = Valve(storage)
    service.add(valve)
    done = await service.execute(Command("W-1", CommandCode.VALVE_CLOSE, "operator:ivanova", "leak in flat 12"))
    assert [(r["id"], r["outcome"]) for r in valve.seen_while_running] == [(done.id, "pending")]
    assert done.outcome == "done" and done.detail == "test-valve: closed"
    (record,) = await storage.journal_list("commands")
    assert record == {"id": done.id, "t": 1_390_176_000, "target": "W-1", "code": "valve_close",
                      "requested_by": "operator:ivanova", "reason": "leak in flat 12", "outcome": "done",
                      "detail": "test-valve: closed"}
    assert observed == [done]


async def test_failing_and_unhandled_commands_are_audited(storage):
    service = ActuationService(storage)
    service.add(Valve(storage, fail=True))
    failed = await service.execute(Command("W-2", CommandCode.VALVE_OPEN, "policy:night", "restore"))
    refused = await service.execute(Command("P-1", CommandCode.PUMP_START, "scada:10.0.0.5", "tank low"))
    assert failed.outcome == "failed" and "ConnectionError: no route to module 1002" in failed.detail
    assert refused.outcome == "refused" and "no actuator handles pump_start" in refused.detail
    outcomes = {r["target"]: r["outcome"] for r in await storage.journal_list("commands")}
    assert outcomes == {"W-2": "failed", "P-1": "refused"}


async def test_command_without_reason_is_refused_before_anything_happens(storage):
    service = ActuationService(storage)
    with pytest.raises(ValueError, match="requested_by and reason"):
        await service.execute(Command("W-1", CommandCode.VALVE_CLOSE, "operator", ""))
    assert await storage.journal_list("commands") == []
