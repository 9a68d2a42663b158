"""The server's configuration: one TOML file validated into typed objects.

Every key has a default good enough for the demo, so an empty file is a valid
configuration. Plugins describe their ``[plugins.NAME]`` table through the
``config_schema`` hook; ``enabled`` and ``required`` exist for every plugin.
See docs/config.md.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from balans_edge.core.balance_worker import BalanceSettings
from balans_edge.core.ingest import IngestSettings
from balans_edge.core.intervals import IntervalSettings
from balans_edge.core.model import Group
from balans_edge.core.roles import Role
from balans_edge.core.tokens import token_digest
from balans_edge.settings import ConfigError, parse_section, setting


def _timezone(name: str) -> str | None:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return f'expected an IANA timezone such as "Europe/Moscow", got "{name}"'
    return None


def _storage_url(url: str) -> str | None:
    if not url.startswith("sqlite:") or len(url) <= len("sqlite:"):
        return f'expected "sqlite:PATH" (the only backend so far), got "{url}"'
    return None


@dataclass(frozen=True)
class ServerSection:
    host: str = setting("127.0.0.1", doc="Address the HTTP API binds to; loopback unless you mean otherwise.")
    port: int = setting(8080, range=(0, 65535), doc="TCP port of the HTTP API (0: any free port, as printed at start)")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_timeout_s: float = setting(15.0, range=(0.1, 600))
    allow_insecure: bool = setting(False, doc="run on a non-loopback address despite weak tokens or an anonymous "
                                              "role (balans_edge.core.tokens); they are still logged")


@dataclass(frozen=True)
class SiteSection:
    name: str = "Demo site"
    timezone: str = setting("UTC", check=_timezone, doc="Days, months and tariff zones are in this timezone.")


@dataclass(frozen=True)
class StorageSection:
    url: str = setting("sqlite:var/balans-edge.db", check=_storage_url)


def _sha256_hex(value: str) -> str | None:
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return None
    return "expected 64 hexadecimal digits (from balans-edge token hash)"


@dataclass(frozen=True)
class ApiUser:
    name: str
    role: Role
    token: str = setting("", secret=True, check=lambda t: None if len(t) >= 16 else "expected at least 16 characters")
    token_sha256: str = setting("", check=_sha256_hex, doc="the token's SHA-256 in hex instead of the token itself")

    def __post_init__(self) -> None:
        if bool(self.token) == bool(self.token_sha256):
            raise ValueError(f'user "{self.name}": give one of token, token_env or token_sha256')

    def digest(self) -> bytes:
        """SHA-256 of the token: what a presented token is compared with (balans_edge.core.tokens)."""
        return bytes.fromhex(self.token_sha256) if self.token_sha256 else token_digest(self.token)


@dataclass(frozen=True)
class ApiSection:
    users: list[ApiUser] = field(default_factory=list)
    anonymous_role: Literal["none", "viewer"] = "none"
    max_body_bytes: int = setting(16 * 1024 * 1024, range=(1024, 1024**3))

    def __post_init__(self) -> None:
        # Two users with one token: the last one won, so a "viewer" token acted as
        # admin. Always an error, whatever form each token is given in.
        first: dict[bytes, int] = {}
        for i, user in enumerate(self.users):
            j = first.setdefault(user.digest(), i)
            if j != i:
                raise ValueError(f'users[{j}] "{self.users[j].name}" and users[{i}] "{user.name}" have the same token: '
                                 "each user needs its own")


@dataclass(frozen=True)
class Config:
    server: ServerSection = field(default_factory=ServerSection)
    site: SiteSection = field(default_factory=SiteSection)
    storage: StorageSection = field(default_factory=StorageSection)
    ingest: IngestSettings = field(default_factory=IngestSettings)
    intervals: IntervalSettings = field(default_factory=IntervalSettings)
    balance: BalanceSettings = field(default_factory=BalanceSettings)
    api: ApiSection = field(default_factory=ApiSection)
    groups: list[Group] = field(default_factory=list)
    """Balance groups declared in the file (``[[groups]]``, columns as in groups.csv);
    written to the registry at start-up after the same checks as an import."""
    plugins: dict[str, Any] = field(default_factory=dict)
    """Validated plugin sections by plugin name (the plugin's dataclass, or a dict)."""
    plugin_flags: dict[str, PluginFlags] = field(default_factory=dict)
    source: str = "<defaults>"


@dataclass(frozen=True)
class PluginFlags:
    enabled: bool = True
    required: bool = False


SECTIONS = {
    "server": ServerSection,
    "site": SiteSection,
    "storage": StorageSection,
    "ingest": IngestSettings,
    "intervals": IntervalSettings,
    "balance": BalanceSettings,
    "api": ApiSection,
}


def parse_config(data: dict[str, Any], schemas: dict[str, type], source: str = "<defaults>") -> Config:
    """Validate a parsed TOML document; collect every problem before raising."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for key in data:
        if key not in SECTIONS and key not in ("plugins", "groups"):
            problems.append(f"[{key}]: unknown section (known: {', '.join([*SECTIONS, 'groups', 'plugins'])})")
    groups = _groups(data.get("groups", []), problems)
    for name, cls in SECTIONS.items():
        try:
            values[name] = parse_section(cls, data.get(name, {}), [name])
        except ConfigError as exc:
            problems.extend(exc.problems)
    plugins_table = data.get("plugins", {})
    plugins: dict[str, Any] = {}
    flags: dict[str, PluginFlags] = {}
    if not isinstance(plugins_table, dict):
        problems.append("[plugins]: expected a table of plugin sections")
        plugins_table = {}
    for name, table in plugins_table.items():
        if not isinstance(table, dict):
            problems.append(f"[plugins.{name}]: expected a table, got {type(table).__name__}")
            continue
        table = dict(table)
        flag_table = {k: table.pop(k) for k in ("enabled", "required") if k in table}
        try:
            flags[name] = parse_section(PluginFlags, flag_table, ["plugins", name])
        except ConfigError as exc:
            problems.extend(exc.problems)
        if name in schemas:
            try:
                plugins[name] = parse_section(schemas[name], table, ["plugins", name])
            except ConfigError as exc:
                problems.extend(exc.problems)
        else:
            plugins[name] = table  # a plugin that is not installed: reported at start-up if required
    for name, schema in schemas.items():
        if name not in plugins:
            try:
                plugins[name] = parse_section(schema, {}, ["plugins", name])
            except ConfigError as exc:
                problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    return Config(**values, groups=groups, plugins=plugins, plugin_flags=flags, source=source)


def _groups(tables: Any, problems: list[str]) -> list[Group]:
    """``[[groups]]`` through the registry's own parser, so the rules and messages are those of groups.csv."""
    from balans_edge.core.registry import RegistryError, parse_object

    if not isinstance(tables, list):
        problems.append("[groups]: expected an array of tables ([[groups]])")
        return []
    groups = []
    for i, table in enumerate(tables):
        try:
            groups.append(parse_object("groups", table, where=f"[[groups]] #{i + 1}"))
        except RegistryError as exc:
            problems.extend(str(p) for p in exc.problems)
    return groups


def load_config(path: str | Path | None, schemas: dict[str, type]) -> Config:
    """Read and validate a TOML file (``None``: the embedded defaults)."""
    if path is None:
        return parse_config({}, schemas)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: invalid TOML: {exc}"]) from exc
    try:
        return parse_config(data, schemas, source=str(path))
    except ConfigError as exc:
        raise ConfigError([f"{path}: {p}" for p in exc.problems]) from None
