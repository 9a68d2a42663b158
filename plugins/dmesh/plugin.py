"""The DMesh plugin: the concentrator driver (TCP and serial, the vendor's link
protocol) and a site simulator."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from balans_edge import hookimpl
from balans_edge.plugins.dmesh.driver import DmeshDriver
from balans_edge.plugins.dmesh.simulator import Simulator, SiteShape
from balans_edge.settings import setting

if TYPE_CHECKING:
    from balans_edge.server import Server

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimulatorConfig:
    enabled: bool = False
    concentrators: int = setting(1, range=(1, 50))
    modules_per_concentrator: int = setting(20, range=(1, 240))
    interval_s: int = setting(60, range=(1, 86400))
    history_hours: int = setting(48, range=(0, 24 * 90))
    seed: int = setting(1, range=(0, 2**31))


def _non_empty(value: str) -> str | None:
    return None if value else "expected a non-empty key"


@dataclass(frozen=True)
class ConcentratorConfig:
    """A concentrator allowed to connect, with its pre-shared key."""

    id: int = setting(range=(1, 2**32 - 1), doc="concentrator id as sent in HELLO")
    key: str = setting(secret=True, check=_non_empty, doc="pre-shared key (HMAC-SHA256)")


@dataclass(frozen=True)
class SerialConfig:
    """A serial line (RS-485 / USB) with a concentrator on the other end."""

    path: str = setting(doc="device path or pyserial URL")
    baudrate: int = setting(115200, range=(50, 4_000_000))


@dataclass(frozen=True)
class DmeshConfig:
    listen: bool = True
    host: str = "127.0.0.1"
    port: int = setting(7433, range=(0, 65535), doc="TCP port (0: any free port)")
    concentrators: list[ConcentratorConfig] = field(default_factory=list)
    clock_drift_limit_s: int = setting(30, range=(0, 86400))
    keepalive_s: float = setting(60.0, range=(0.01, 86400.0))
    dead_after_s: float = setting(180.0, range=(0.01, 86400.0))
    serial: list[SerialConfig] = field(default_factory=list)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)

    def __post_init__(self) -> None:
        ids = [c.id for c in self.concentrators]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"concentrators: id {duplicates[0]} is listed more than once")


@hookimpl
def config_schema() -> dict[str, type]:
    return {"dmesh": DmeshConfig}


@hookimpl
def register_components(server: Server) -> list:
    config: DmeshConfig = server.plugin_config("dmesh")
    components: list = []
    if config.listen or config.serial:
        if config.concentrators:
            components.append(DmeshDriver(server, config))
        else:
            log.info("dmesh: no concentrators configured, the driver is not started")
    sim = config.simulator
    if sim.enabled:
        shape = SiteShape(sim.concentrators, sim.modules_per_concentrator, sim.seed)
        components.append(Simulator(server.storage, server.ingest, shape, sim.interval_s, sim.history_hours))
    return components
