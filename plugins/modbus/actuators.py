"""Valves, pumps and relays a PLC drives: commands written to a coil or a
holding register, confirmed by reading a coil, discrete input or register
back (the rules of ``core.readback``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal

from balans_edge.core.readback import SwitchFailed
from balans_edge.plugins.common.actuators import ClientActuator
from balans_edge.plugins.common.client_config import ActuatorSettings
from balans_edge.plugins.modbus.client import BadAnswer, DeviceRefused, LinkDown, NoAnswer
from balans_edge.plugins.modbus.tags import BIT_TABLES
from balans_edge.settings import setting

if TYPE_CHECKING:
    from balans_edge.plugins.modbus.client import Device


@dataclass(frozen=True, kw_only=True)
class ActuatorConfig(ActuatorSettings):
    """A valve, pump or relay switched through one coil or holding register of a device."""

    write_table: Annotated[Literal["coil", "holding"], setting(doc="where the command is written")] = "coil"
    write_address: Annotated[int, setting(range=(0, 65535), doc="0-based address written")]
    on_value: Annotated[int, setting(range=(0, 65535), doc="written to open, start or switch on")] = 1
    off_value: Annotated[int, setting(range=(0, 65535), doc="written to close, stop or switch off")] = 0
    readback_table: Annotated[Literal["coil", "discrete", "holding", "input"], setting(
        doc="where the resulting state is read")] = "discrete"
    readback_address: Annotated[int, setting(range=(0, 65535), doc="0-based address of the resulting state")]
    readback_on: Annotated[int, setting(range=(0, 65535), doc="read back once open, running or on")] = 1
    readback_off: Annotated[int, setting(range=(0, 65535), doc="read back once closed, stopped or off")] = 0
    confirm_timeout_s: Annotated[float, setting(range=(0.05, 3600.0), doc="give up confirming after this long")] = 10.0
    confirm_every_s: Annotated[float, setting(range=(0.01, 60.0), doc="read the state back this often")] = 0.2

    def __post_init__(self) -> None:
        where = f'actuator "{self.target}"'
        if self.on_value == self.off_value:
            raise ValueError(f"{where}: on_value and off_value are both {self.on_value}")
        if self.readback_on == self.readback_off:
            raise ValueError(f"{where}: readback_on and readback_off are both {self.readback_on}")
        if self.write_table == "coil" and {self.on_value, self.off_value} - {0, 1}:
            raise ValueError(f"{where}: a coil is written 0 or 1")
        if self.readback_table in BIT_TABLES and {self.readback_on, self.readback_off} - {0, 1}:
            raise ValueError(f"{where}: a {self.readback_table} reads back 0 or 1")


class ModbusActuator(ClientActuator[ActuatorConfig, "Device"]):
    """Executes the commands of every configured Modbus actuator."""

    name = "modbus"

    async def switch(self, config: ActuatorConfig, device: Device, on: bool) -> str:
        value = config.on_value if on else config.off_value
        written = f"{value} to {config.write_table} {config.write_address}"
        try:
            await device.write(config.write_table, config.write_address, value)
        except DeviceRefused as exc:
            raise SwitchFailed(f"{config.device} refused writing {written}: {exc}") from None
        except (LinkDown, NoAnswer, BadAnswer) as exc:
            raise SwitchFailed(f"{config.device}: the write was not delivered: {exc}") from None
        return f"wrote {written}"

    async def read_back(self, config: ActuatorConfig, device: Device) -> tuple[Any, str]:
        try:
            (seen,) = await device.read(config.readback_table, config.readback_address, 1, force=True)
        except (DeviceRefused, LinkDown, NoAnswer, BadAnswer) as exc:
            return None, str(exc)
        return seen, ""

    def readback_point(self, config: ActuatorConfig) -> str:
        return f"{config.readback_table} {config.readback_address}"

    def wiring(self, config: ActuatorConfig) -> dict[str, str]:
        return {"write": f"{config.write_table} {config.write_address}", "readback": self.readback_point(config)}
