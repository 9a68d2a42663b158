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
from typing import Annotated, Any, Literal
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
    """The HTTP API."""

    host: Annotated[str, setting(doc="address of the HTTP API; loopback unless you mean otherwise")] = "127.0.0.1"
    port: Annotated[int, setting(range=(0, 65535), doc="TCP port of the HTTP API; 0 takes any free port, printed "
                                                       "at start (`listening on http://HOST:PORT`)")] = 8080
    log_level: Annotated[Literal["debug", "info", "warning", "error"], setting(doc="the server log's level")] = "info"
    shutdown_timeout_s: Annotated[float, setting(range=(0.1, 600), doc="how long shutdown waits for HTTP requests "
                                                                       "in flight")] = 15.0
    allow_insecure: Annotated[bool, setting(doc="listen on a non-loopback `host` despite the risks of \"Security "
                                                "checks\" below (they are still logged)")] = False


@dataclass(frozen=True)
class SiteSection:
    """The site this server meters."""

    name: Annotated[str, setting(doc="shown in health and reports")] = "Demo site"
    timezone: Annotated[str, setting(check=_timezone, doc="IANA name; days, months and tariff zones are local "
                                                          "to it")] = "UTC"


@dataclass(frozen=True)
class StorageSection:
    """The database holds consumers' names, addresses and phones: a new database
    file is created readable and writable by its owner only (mode 0600), and
    SQLite gives its `-wal` and `-shm` files the same mode. An existing file that
    others can read is used as it is, with a warning at start (`chmod 600` it)."""

    url: Annotated[str, setting(check=_storage_url, doc="`sqlite:PATH` (relative to the working "
                                                        "directory)")] = "sqlite:var/balans-edge.db"


def _sha256_hex(value: str) -> str | None:
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return None
    return "expected 64 hexadecimal digits (from balans-edge token hash)"


def _token(value: str) -> str | None:
    return None if len(value) >= 16 else "expected at least 16 characters"


@dataclass(frozen=True)
class ApiUser:
    """A user of the HTTP API: exactly one of `token`, `token_env` or `token_sha256`."""

    name: Annotated[str, setting(doc="who the token belongs to (logs and the audit name it)")]
    role: Annotated[Role, setting(doc="viewer reads, operator also pushes readings and issues commands, admin "
                                      "also changes the registry")]
    token: Annotated[str, setting(secret=True, check=_token, doc="the bearer token, at least 16 characters, "
                                                                "each user its own")] = ""
    token_sha256: Annotated[str, setting(check=_sha256_hex, doc="the token's SHA-256 in hex instead of the token "
                                                                "itself (`balans-edge token new`)")] = ""

    def __post_init__(self) -> None:
        if bool(self.token) == bool(self.token_sha256):
            raise ValueError(f'user "{self.name}": give one of token, token_env or token_sha256')

    def digest(self) -> bytes:
        """SHA-256 of the token: what a presented token is compared with (balans_edge.core.tokens)."""
        return bytes.fromhex(self.token_sha256) if self.token_sha256 else token_digest(self.token)


@dataclass(frozen=True)
class ApiSection:
    """Every route except `GET /api/v1/health` and `GET /api/v1/openapi.json` needs a
    bearer token (`Authorization: Bearer TOKEN`); health without a token shows
    only its overall `status`, the details need a viewer. viewer reads, operator also
    pushes readings and issues commands, admin also changes the registry.

    **Tokens.** Give each user exactly one of `token` (the token itself),
    `token_env` (the variable holding it) or `token_sha256` (its SHA-256 in hex,
    so the file holds no token at all). `balans-edge token new --name scada
    --role operator` prints a random token (256 bits) for the client and the
    config line with its hash; `balans-edge token hash` reads a token from
    standard input (not the command line, which shells keep) and prints its hash.
    Presented tokens are hashed and compared with every user's hash in constant
    time. A plain SHA-256 is the right hash for API tokens, unlike for
    passwords: they are random and long, so nobody finds one from its hash
    however fast they hash, and a slow hash would cost every request. Two users
    with the same token (in any form) are an error: the last one used to win, so a
    "viewer" token acted as admin.

    **Refusals in the log.** Every 401 and 403 is logged as a warning with the
    peer's address and the route (`HTTP 401 GET /api/v1/meters from 10.0.0.7:
    invalid bearer token`; a 403 names the user and the role it lacks), at most 20
    lines a minute; the next line written says how many were left out, so a
    scanner cannot flood the log.

    **Security checks.** `check-config` and `run` look for risks:

    - a weak token: a placeholder word (`change-me`, `example`, `secret`,
      `password`, `demo`, ... ignoring case and punctuation), fewer than 24
      characters, or little entropy (under about 64 bits: one letter repeated, a
      short pattern repeated); hashed tokens cannot be checked;
    - `anonymous_role = "viewer"` on an address other than loopback.

    On loopback (`127.0.0.1`, `::1`, `localhost`) they are warnings: the demo's
    tokens are fine there. On any other address (`0.0.0.0`, a LAN address, a
    host name) they refuse the start (exit 2) and fail `check-config` (exit 2),
    naming each risk, unless `[server] allow_insecure = true`; then they are
    logged as warnings at every start. `run --host` is checked as the address it
    gives. Duplicate tokens are always an error (above).
    """

    users: Annotated[list[ApiUser], setting(doc="`[[api.users]]`, or `users = [{ name, role, token }, ...]`")] = \
        field(default_factory=list)
    anonymous_role: Annotated[Literal["none", "viewer"], setting(doc='`"viewer"` lets requests without a token '
                                                                    "read")] = "none"
    max_body_bytes: Annotated[int, setting(range=(1024, 1024**3), doc="larger request bodies get "
                                                                      "413")] = 16 * 1024 * 1024

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
    """One TOML file, given with `balans-edge run -c FILE`. Every key has a default,
    so an empty file (or no file) runs a demo-grade server on 127.0.0.1 (an example:
    `config/demo.toml`). `balans-edge check-config FILE` validates a file and exits
    2 on any problem; every problem names its key path and what was expected:

    ```
    config.toml: [plugins.dmesh.simulator] concentrators: expected an integer 1..50, got 0
    config.toml: [server] hots: unknown key (did you mean "host"?)
    config.toml: [api.users[0]] token_env: environment variable API_TOKEN is not set
    ```

    ## Secrets from the environment

    A secret key `x` may be given as `x_env = "VARIABLE"` instead: the value is
    read from that environment variable at start-up, and an unset variable is an
    error. Giving both is an error. The secret keys are marked *secret* below
    (e.g. `{ id = 900001, key_env = "DMESH_KEY_900001" }` in `[plugins.dmesh]
    concentrators`).

    Secrets are never repeated: check-config's messages leave out a secret key's
    value, and a password in a URL (`http://user:PASSWORD@host`), a user part
    without a password, secret query values (`token=`, `password=`, `p=`, ...)
    and `Authorization` credentials are shown as `***` in health, status
    commands, the plugin listing and every log line (`balans_edge.core.redact`).
    """

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
    """Each plugin has its section `[plugins.NAME]`, described by the plugin's
    `config_schema` hook (docs/plugins.md). Two keys exist for every plugin; a
    required plugin that is not installed, fails to load or fails to start stops
    the server at start-up with a clear message; any other failing plugin is
    disabled and reported (`balans-edge plugins`, `GET /api/v1/plugins`) while
    the rest runs. The plugins' folders say more (`plugins/dmesh/README.md`,
    `plugins/modbus/README.md` with the Modbus register map in `docs/modbus.md`,
    `plugins/opcua/README.md` with the OPC UA address space in `docs/opcua.md`,
    `plugins/export/README.md` with the exported measurements and the
    store-and-forward rules in `docs/export.md`, ...)."""

    enabled: Annotated[bool, setting(doc="false unloads the plugin before anything is collected from it")] = True
    required: Annotated[bool, setting(doc="true: the server does not start without this plugin working (not "
                                          "installed, failing to load or to start); otherwise a failing plugin is "
                                          "disabled and reported while the rest runs")] = False


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


GROUPS_TEXT = """Balance groups, one table each, with the columns of `groups.csv`
(docs/registry.md); `inputs` is a list such as `["CW-IN", "-TRANSIT-7"]`.
They are written to the registry at start-up, after the same checks as an
import; if they do not fit the registry, start-up fails (exit 2) and nothing
is written."""


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
