"""The DMesh plugin: concentrator site simulator (the driver for real
concentrators follows the vendor protocol in a later step)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from balans_edge import hookimpl
from balans_edge.plugins.dmesh.simulator import Simulator, SiteShape
from balans_edge.settings import setting

if TYPE_CHECKING:
    from balans_edge.server import Server


@dataclass(frozen=True)
class SimulatorConfig:
    enabled: bool = False
    concentrators: int = setting(1, range=(1, 50))
    modules_per_concentrator: int = setting(20, range=(1, 240))
    interval_s: int = setting(60, range=(1, 86400))
    history_hours: int = setting(48, range=(0, 24 * 90))
    seed: int = setting(1, range=(0, 2**31))


@dataclass(frozen=True)
class DmeshConfig:
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)


@hookimpl
def config_schema() -> dict[str, type]:
    return {"dmesh": DmeshConfig}


@hookimpl
def register_components(server: Server) -> list:
    config: DmeshConfig = server.plugin_config("dmesh")
    sim = config.simulator
    if not sim.enabled:
        return []
    shape = SiteShape(sim.concentrators, sim.modules_per_concentrator, sim.seed)
    return [Simulator(server.storage, server.ingest, shape, sim.interval_s, sim.history_hours)]
