"""The actuation service audits every command before and after it reaches a device,
and is the only writer of the command audit."""

from __future__ import annotations

import ast
from pathlib import Path

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


class Module:
    """A device that answers later than its command waits: the outcome comes by ``settle``."""

    name = "radio"

    def handles(self, command: Command) -> bool:
        return command.target.startswith("module:")

    async def execute(self, command: Command) -> CommandOutcome:
        return CommandOutcome(False, "timeout after 1 s")


async def test_a_late_outcome_is_recorded_and_observed_as_the_final_one(storage):
    observed: list[Command] = []

    async def observe(command: Command) -> None:
        observed.append(command)

    service = ActuationService(storage, observer=observe)
    service.add(Module())
    asked = await service.execute(Command("module:1001", CommandCode.SET_INTERVAL, "api:op", "winter",
                                          detail="3600 s", args={"seconds": 3600}))
    assert (asked.outcome, asked.detail) == ("failed", "radio: 3600 s: timeout after 1 s")
    assert (await service.get(asked.id)).record() == asked.record()

    settled = await service.settle(asked.id, "done", f"{asked.detail}; a late result arrived: DONE")
    assert settled is not None and (settled.id, settled.outcome) == (asked.id, "done")
    assert [(c.id, c.outcome) for c in observed] == [(asked.id, "failed"), (asked.id, "done")]
    (record,) = await storage.journal_list("commands")
    assert record == {**asked.record(), "outcome": "done", "detail": "radio: 3600 s: timeout after 1 s; "
                                                                      "a late result arrived: DONE"}
    assert await service.settle(asked.id + 1, "done", "") is None
    assert len(observed) == 2


async def test_storage_refuses_the_command_journal_to_anyone_but_the_service(storage):
    with pytest.raises(ValueError, match="actuation service only"):
        await storage.journal_append("commands", {"t": 1, "target": "module:1", "code": "ping",
                                                  "requested_by": "plugin", "reason": "r", "outcome": "done"})
    record_id = await storage.command_append({"t": 1, "target": "module:1", "code": "ping", "requested_by": "test",
                                              "reason": "r", "outcome": "pending", "detail": ""})
    with pytest.raises(ValueError, match="actuation service only"):
        await storage.journal_update("commands", record_id, {"outcome": "done"})
    assert (await storage.journal_get("commands", record_id))["outcome"] == "pending"
    assert await storage.journal_append("alarms", {"t": 1, "source": "s", "severity": "warning", "message": "m"})


ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("balans_edge", "core", "plugins", "examples")
COMMAND_WRITERS = {"command_append", "command_update"}


def _calls(path: Path) -> list[tuple[str, ast.Call]]:
    tree = ast.parse(path.read_text("utf-8"), str(path))
    return [(node.func.attr, node) for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)]


def test_only_the_actuation_service_writes_the_command_journal():
    """No plugin, route or example writes ``commands``: every command goes through
    ``ActuationService.execute`` (and ``settle``), so it is routed, audited and observed."""
    files = [p for top in SOURCES for p in (ROOT / top).rglob("*.py")]
    assert len(files) > 100
    offenders = []
    for path in files:
        where = path.relative_to(ROOT).as_posix()
        for name, call in _calls(path):
            first = call.args[0] if call.args else None
            generic = (name in {"journal_append", "journal_update"} and isinstance(first, ast.Constant)
                       and first.value == "commands")
            if generic or (name in COMMAND_WRITERS and where != "core/actuation.py"):
                offenders.append(f"{where}:{call.lineno} {name}")
    assert offenders == []
