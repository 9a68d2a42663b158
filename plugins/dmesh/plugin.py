"""The DMesh plugin: the concentrator driver (TCP and serial, the vendor's link
protocol) and a site simulator, with its own tables (``repository.py``: its
migrations and its repository)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated
from zoneinfo import ZoneInfo

from balans_edge import hookimpl
from balans_edge.core.context import Plugin, PluginContext
from balans_edge.core.storage.migrations import MigrationSet
from balans_edge.plugins.dmesh.command_api import command_routes
from balans_edge.plugins.dmesh.commands import DmeshActuator
from balans_edge.plugins.dmesh.driver import DmeshDriver
from balans_edge.plugins.dmesh.firmware import check_public_key
from balans_edge.plugins.dmesh.network import NetworkConfig, NetworkMonitor
from balans_edge.plugins.dmesh.repository import MIGRATIONS, DmeshRepository
from balans_edge.plugins.dmesh.simulator import Simulator, SimulatorConfig, SiteModel, TcpDelivery
from balans_edge.settings import setting

if TYPE_CHECKING:
    import click


log = logging.getLogger(__name__)


def _non_empty(value: str) -> str | None:
    return None if value else "expected a non-empty key"


@dataclass(frozen=True)
class ConcentratorConfig:
    """A concentrator allowed to connect, with its pre-shared key."""

    id: Annotated[int, setting(range=(1, 2**32 - 1), doc="concentrator id as sent in HELLO")]
    key: Annotated[str, setting(secret=True, check=_non_empty, doc="pre-shared key (HMAC-SHA256)")]


@dataclass(frozen=True)
class SerialConfig:
    """A serial line (RS-485 / USB) with a concentrator on the other end; a port that fails or
    closes is opened again after 0.5 s, doubling up to 30 s."""

    path: Annotated[str, setting(doc="device path or pyserial URL")]
    baudrate: Annotated[int, setting(range=(50, 4_000_000), doc="the line's speed, bits per second")] = 115200


@dataclass(frozen=True)
class DmeshConfig:
    """``[plugins.dmesh]``: the concentrator driver (TCP and serial, the vendor's link
    protocol, plugins/dmesh/README.md) and the simulated site."""

    listen: Annotated[bool, setting(doc="accept concentrators over TCP")] = True
    host: Annotated[str, setting(doc="address to listen on")] = "127.0.0.1"
    port: Annotated[int, setting(range=(0, 65535), doc="TCP port (0: any free port)")] = 7433
    concentrators: Annotated[list[ConcentratorConfig], setting(
        doc="concentrators allowed to connect, e.g. `{ id = 900001, key_env = \"DMESH_KEY_900001\" }`")] = \
        field(default_factory=list)
    clock_drift_limit_s: Annotated[int, setting(range=(0, 86400), doc=(
        "seconds of clock difference beyond which WELCOME sets flag bit 0"))] = 30
    keepalive_s: Annotated[float, setting(range=(0.01, 86400.0), doc=(
        "seconds without traffic before the host sends PING"))] = 60.0
    dead_after_s: Annotated[float, setting(range=(0.01, 86400.0), doc=(
        "seconds without a valid frame before a link is closed"))] = 180.0
    auth_timeout_s: Annotated[float, setting(range=(0.01, 3600.0), doc=(
        "close a link that has not authenticated this long after it opened"))] = 10.0
    max_unauthenticated: Annotated[int, setting(range=(1, 100000), doc=(
        "TCP links authenticating at once; one more is closed at once"))] = 64
    serial: Annotated[list[SerialConfig], setting(doc="serial lines with a concentrator")] = \
        field(default_factory=list)
    command_timeout_s: Annotated[float, setting(range=(0.01, 86400.0), doc=(
        "seconds the host waits for a command's transport ACK and COMMAND_RESULT"))] = 600.0
    backfill: Annotated[bool, setting(doc="request profiles of missing hours when a concentrator logs in")] = True
    backfill_days: Annotated[int, setting(range=(1, 7), doc="how far back the back-fill looks")] = 7
    backfill_delay_s: Annotated[float, setting(range=(0.0, 3600.0), doc=(
        "wait after a login before the back-fill"))] = 30.0
    firmware_public_key: Annotated[str, setting(secret=True, check=check_public_key, doc=(
        "the vendor's Ed25519 public key that signs firmware, the raw 32 bytes in hex (64 characters); "
        "empty: firmware pushes are refused"))] = ""
    firmware_timeout_s: Annotated[float, setting(range=(1.0, 86400.0), doc=(
        "seconds the host waits for a push's FIRMWARE_RESULT, from its start"))] = 900.0
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)

    def __post_init__(self) -> None:
        ids = [c.id for c in self.concentrators]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"concentrators: id {duplicates[0]} is listed more than once")


def concentrator_keys(config: DmeshConfig) -> dict[int, bytes]:
    return {c.id: c.key.encode("utf-8") for c in config.concentrators}


def utc_offset_h(timezone: str) -> int:
    """The site's offset from UTC now, in whole hours (for the household day)."""
    offset = datetime.now(ZoneInfo(timezone)).utcoffset() or timedelta(0)
    return round(offset.total_seconds() / 3600)


class DmeshPlugin(Plugin):
    """The driver (when concentrators are configured), the simulator (when
    enabled), the network monitor, and what they offer over HTTP; all of them
    reach the plugin's tables through its one ``repository``."""

    driver: DmeshDriver | None = None
    repository: DmeshRepository

    def bind(self, context: PluginContext) -> None:
        super().bind(context)
        config: DmeshConfig = context.config
        self.repository = DmeshRepository(context.database, context.ingest)
        self.driver = None
        if config.listen or config.serial:
            if config.concentrators:
                self.driver = DmeshDriver(context, config, self.repository)
            else:
                log.info("dmesh: no concentrators configured, the driver is not started")
        self.monitor = NetworkMonitor(context, self.repository,
                                      lambda: self.driver.sessions() if self.driver else {})

    def _simulator(self) -> Simulator | None:
        config: DmeshConfig = self.config
        sim = config.simulator
        if not sim.enabled:
            return None
        tcp = None
        if sim.transport == "tcp":
            driver = self.driver
            keys = concentrator_keys(config)
            TcpDelivery.check_keys(sim, keys)

            def tcp(site: SiteModel) -> TcpDelivery:
                return TcpDelivery(site, keys, lambda: driver.port if driver else None, config.host)

        context = self.context
        return Simulator(context.queries, context.registry_editor, context.ingest, sim,
                         utc_offset_h(context.site.timezone), tcp)

    @hookimpl
    def config_schema(self) -> dict[str, type]:
        return {"dmesh": DmeshConfig}

    @hookimpl
    def register_migrations(self) -> list[MigrationSet]:
        return [MIGRATIONS]

    @hookimpl
    def register_components(self) -> list:
        simulator = self._simulator()
        return [c for c in (self.driver, simulator) if c is not None]

    @hookimpl
    def register_actuators(self) -> list:
        return [DmeshActuator(self.driver)] if self.driver is not None else []

    @hookimpl
    def register_routes(self) -> list:
        from balans_edge.plugins.dmesh.firmware_api import firmware_routes
        from balans_edge.plugins.dmesh.network_api import routes as network_routes

        driver = lambda: self.driver  # noqa: E731 - the routes ask for the running driver each time
        return (command_routes(self.context, driver) + firmware_routes(self.context, driver)
                + network_routes(self.context, self.monitor, self.repository))

    @hookimpl
    def register_detectors(self) -> list:
        """The network health detector, when there is a network to watch."""
        config: DmeshConfig = self.config
        return [self.monitor] if config.concentrators or config.simulator.enabled else []

    @hookimpl
    def register_commands(self, cli: click.Group) -> None:
        from balans_edge.cli import command_group
        from balans_edge.plugins.dmesh.commissioning import add_commands
        from balans_edge.plugins.dmesh.firmware_api import add_commands as add_firmware_commands
        from balans_edge.plugins.dmesh.simulate_cli import add_commands as add_simulate_commands

        group = command_group(cli, "dmesh", "DMesh concentrators and radio network.")
        add_commands(group)
        add_firmware_commands(group)
        add_simulate_commands(group)
