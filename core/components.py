"""What plugins contribute: the small interfaces the server calls.

Protocols rather than base classes, so a plugin can implement them with any
object. Findings, alarms and commands are the records that flow from
detectors to notifiers and actuators; their fields here are the minimum the
later analytics and control work builds on.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Component(Protocol):
    """A long-running part of a plugin. The server starts and stops it; its
    loops run as tasks the server supervises (``Server.supervise``), and work
    that fails while it runs is reported (``Server.component_fault``), so a
    component that dies shows as failed in /health instead of going quiet."""

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


@dataclass(frozen=True, slots=True)
class Finding:
    """Something a detector concluded about a meter or group."""

    detector: str
    subject: str
    """meter_id or group id the finding is about."""
    kind: str
    message: str
    severity: Severity = Severity.WARNING
    t: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


@dataclass(frozen=True, slots=True)
class Alarm:
    source: str
    message: str
    severity: Severity = Severity.WARNING
    t: int = 0
    data: dict[str, Any] = field(default_factory=dict)
    id: int | None = None


class CommandCode(enum.StrEnum):
    VALVE_CLOSE = "valve_close"
    VALVE_OPEN = "valve_open"
    RELAY_OFF = "relay_off"
    RELAY_ON = "relay_on"
    PUMP_START = "pump_start"
    PUMP_STOP = "pump_stop"
    PING = "ping"
    """Ask a device whether it answers."""
    SET_INTERVAL = "set_interval"
    """Change how often a device reports (``args``: ``seconds``)."""
    PROFILE_REQUEST = "profile_request"
    """Ask a device for stored readings it did not deliver (``args``: ``channel``, ``from``, ``to``)."""
    FIRMWARE_PUSH = "firmware_push"
    """Send a verified firmware image (``args``: ``image``)."""


SWITCH_CODES = (CommandCode.VALVE_CLOSE, CommandCode.VALVE_OPEN, CommandCode.RELAY_OFF, CommandCode.RELAY_ON,
                CommandCode.PUMP_START, CommandCode.PUMP_STOP)
"""The commands that move a valve, relay or pump (the others reconfigure or query a device)."""


@dataclass(frozen=True, slots=True)
class Command:
    """A request to a device: move a valve, relay or pump, or reconfigure or
    query it (ping, reporting interval, profile request, firmware push).
    Every one goes through the actuation service, which audits it."""

    target: str
    """meter_id, or a device: ``module:<id>``, ``concentrator:<id>``, an actuator's target."""
    code: CommandCode
    requested_by: str
    """Who asked: an API user, an OPC UA user, a Modbus peer, a policy."""
    reason: str
    t: int = 0
    id: int | None = None
    outcome: str = ""
    """pending | done | refused | failed, or the device's own word when it has one
    (a firmware push: accepted, bad_signature, bad_hash, bad_layout, timeout);
    filled in by the actuation service."""
    detail: str = ""
    """Given by the caller: what exactly is asked (an interval, the image), kept in
    the audit while the command runs; the service adds the actuator's answer."""
    args: dict[str, Any] = field(default_factory=dict, repr=False)
    """What the actuator needs beyond the code (an interval, a firmware image);
    not audited as such: ``detail`` describes it."""

    def record(self) -> dict[str, Any]:
        """The command as the audit stores and shows it."""
        return {"id": self.id, "t": self.t, "target": self.target, "code": str(self.code),
                "requested_by": self.requested_by, "reason": self.reason, "outcome": self.outcome,
                "detail": self.detail}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Command:
        """A command as the audit holds it (without ``args``)."""
        return cls(record["target"], CommandCode(record["code"]), record["requested_by"] or "",
                   record["reason"] or "", t=int(record["t"] or 0), id=record["id"],
                   outcome=record["outcome"] or "", detail=record["detail"] or "")


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    ok: bool
    detail: str = ""
    outcome: str = ""
    """The audit outcome when done or failed does not say it all (a firmware
    push: accepted, bad_signature, timeout ...); empty: done if ``ok``, else failed."""


@runtime_checkable
class Detector(Protocol):
    """Finds losses and faults; the detection service runs it with a ``DetectionRun``
    (the scope and read access to the data: ``core.detection``)."""

    name: str

    async def detect(self, run: Any) -> list[Finding]: ...


@runtime_checkable
class Actuator(Protocol):
    name: str

    def handles(self, command: Command) -> bool | Awaitable[bool]: ...

    async def execute(self, command: Command) -> CommandOutcome: ...


@runtime_checkable
class Notifier(Protocol):
    name: str

    async def notify(self, alarm: Alarm) -> None: ...


@runtime_checkable
class Exporter(Component, Protocol):
    """Sends data to another system; ``status()`` is shown in health."""

    def status(self) -> dict[str, Any]: ...
