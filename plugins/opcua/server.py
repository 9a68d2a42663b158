"""The OPC UA server for SCADA and MES (asyncua), as a balans-edge component.

Start: the server's certificate (made on first start, ``pki.py``), asyncua's
standard address space, our types, the address space of the registry
(``model.py`` -> ``space.py``), the live values from storage
(``values.py``), then the endpoint. Afterwards:

- bus events (new readings, new hourly consumption, new balances) are
  batched, read from storage and the changed values written, so subscribers
  get data changes; lost events (a full queue) make it read everything;
- every second: a changed registry (its version, or every
  ``registry_poll_s``) is applied to the address space; a new hour re-reads
  the last hour and today; every ``age_interval_s`` the data ages;
- commands done by anyone update the valve and relay states
  (``observe_commands``); alarms become ``BalansAlarmEventType`` events of the
  Server object, where SCADA clients subscribe (``observe_alarms``);
- valve and relay methods run through the core actuation service, audited
  with ``requested_by = "opcua:<user>"``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from asyncua import Server as UaServer
from asyncua import ua
from asyncua.crypto.security_policies import SecurityPolicyFactory, SecurityPolicyNone

from balans_edge import __version__
from balans_edge.core.components import Alarm, Command, CommandCode
from balans_edge.core.tokens import token_digest
from balans_edge.plugins.common.bridge import LiveBridge
from balans_edge.plugins.common.live import load_all, refresh_new_hour, resolutions
from balans_edge.plugins.opcua import model as m
from balans_edge.plugins.opcua import pki
from balans_edge.plugins.opcua.config import ServerConfig
from balans_edge.plugins.opcua.security import (
    Credential,
    DiscoveryOnly,
    RoleRules,
    TrustList,
    Users,
    current_login,
    install_refusal_log,
    request_peer,
)
from balans_edge.plugins.opcua.space import Publisher, Space, SyncStats
from balans_edge.plugins.opcua.values import Values

if TYPE_CHECKING:
    from balans_edge.core.context import PluginContext

log = logging.getLogger(__name__)

PRODUCT_URI = "urn:balans-edge"
SECURITY = {
    ("None", ""): ua.SecurityPolicyType.NoSecurity,
    ("Basic256Sha256", "Sign"): ua.SecurityPolicyType.Basic256Sha256_Sign,
    ("Basic256Sha256", "SignAndEncrypt"): ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
    ("Aes128_Sha256_RsaOaep", "Sign"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ("Aes128_Sha256_RsaOaep", "SignAndEncrypt"): ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
    ("Aes256_Sha256_RsaPss", "Sign"): ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ("Aes256_Sha256_RsaPss", "SignAndEncrypt"): ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
}
EVENT_FIELDS = (("AlarmId", ua.VariantType.Int64, 0), ("FindingId", ua.VariantType.Int64, 0),
                ("Kind", ua.VariantType.String, ""), ("Subject", ua.VariantType.String, ""),
                ("Detector", ua.VariantType.String, ""), ("GroupId", ua.VariantType.String, ""))
"""Fields of BalansAlarmEventType beyond BaseEventType's (FindingId 0: the alarm is not about a finding)."""
OUTCOME_STATUS = {"refused": ua.StatusCodes.BadInvalidState, "failed": ua.StatusCodes.BadDeviceFailure,
                  "timeout": ua.StatusCodes.BadTimeout}
WILDCARDS = ("", "0.0.0.0", "::")  # noqa: S104 (names, not a bind)


def application_uri(config: ServerConfig) -> str:
    return config.application_uri or f"urn:{socket.gethostname()}:balans-edge"


def endpoint_url(config: ServerConfig, port: int) -> str:
    host = socket.gethostname() if config.host in WILDCARDS else config.host
    if ":" in host:
        host = f"[{host}]"
    return f"opc.tcp://{host}:{port}{config.path}"


def credentials(config: ServerConfig, api_users: list[Any]) -> list[Credential]:
    out = [Credential(u.name, u.role, token_digest(u.password)) for u in config.users]
    if config.api_users:
        named = {c.name for c in out}
        # By digest: a user given as token_sha256 has no token to compare (its token field is empty).
        out += [Credential(u.name, u.role, u.digest()) for u in api_users if u.name not in named]
    return out


class OpcuaServer(LiveBridge[ServerConfig]):
    """Serves the registry's address space with live values, events and methods;
    refreshes the values from storage on bus events and every second (``LiveBridge``)."""

    name = "opcua-server"

    def __init__(self, context: PluginContext, config: ServerConfig) -> None:
        super().__init__(context, config)
        self.ua: UaServer | None = None
        self.space: Space | None = None
        self.publisher: Publisher | None = None
        self.values: Values | None = None
        self.ns = 0
        self.endpoint = ""
        self.application_uri = application_uri(config)
        self.pki = pki.Pki(Path(config.pki_dir))
        self.certificate_created = False
        self.events_sent = 0
        self.last_sync: SyncStats | None = None
        self._cache = m.SpecCache()
        self._registry_version: int | None = None
        self._registry_read = 0.0
        self._aged = 0.0
        self._objects: tuple[list[Any], list[Any]] | None = None
        self._alarms: Any = None
        self._kinds: dict[str, str] = {}

    # lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        logger = logging.getLogger("asyncua")
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.WARNING)  # its INFO lines report every request
        install_refusal_log()
        self.subscribe()
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise
        self.follow()

    @property
    def live(self) -> Values | None:
        return self.values

    async def _start(self) -> None:
        config = self.config
        hosts = pki.default_hosts(config.host)
        cert, self.certificate_created = await asyncio.to_thread(
            pki.ensure_own, self.pki, self.application_uri, config.server_name, hosts)
        if self.certificate_created:
            log.info("opcua: created the server certificate %s (thumbprint %s) for %s", self.pki.cert_der,
                     pki.thumbprint(cert), self.application_uri)
        creds = credentials(config, self.context.api_users)
        if not creds and config.anonymous_role == "none":
            log.warning("opcua: no users and no anonymous access: nobody can open a session")
        ua_server = UaServer(user_manager=Users(creds, config.anonymous_role))
        self.ua = ua_server
        await ua_server.init()
        ua_server.set_server_name(config.server_name)
        ua_server.product_uri = PRODUCT_URI
        ua_server.manufacturer_name = "balans-edge"
        await ua_server.set_application_uri(self.application_uri)
        await ua_server.set_build_info(PRODUCT_URI, "balans-edge", "balans-edge", __version__, __version__,
                                       datetime.now(UTC))
        self.endpoint = endpoint_url(config, config.port)
        ua_server.set_endpoint(self.endpoint)
        ua_server.socket_address = (config.host or None, config.port)  # type: ignore[assignment]
        ua_server.iserver.max_connections = config.max_connections
        await ua_server.load_certificate(str(self.pki.cert_der))
        await ua_server.load_private_key(str(self.pki.key_pem))
        ua_server.set_security_policy(self._policies(), permission_ruleset=RoleRules())
        if "None" not in config.security_policies:
            # Matched first for channels without security: discovery only (see DiscoveryOnly).
            ua_server._policies.append(SecurityPolicyFactory(SecurityPolicyNone, ua.MessageSecurityMode.None_,
                                                             permission_ruleset=DiscoveryOnly()))
        tokens: list[type] = [ua.UserNameIdentityToken]
        if config.anonymous_role == "viewer":
            tokens.append(ua.AnonymousIdentityToken)
        ua_server.set_identity_tokens(tokens)
        ua_server.set_certificate_validator(TrustList(self.pki))  # type: ignore[arg-type]
        self.ns = await ua_server.register_namespace(m.NAMESPACE_URI)
        self.space = Space(ua_server.iserver.aspace, self.ns, methods=self._method)
        self.space.add_types(m.type_specs())
        self._alarms = await self._alarm_generator(ua_server)
        self.publisher = Publisher(self.space)
        started = time.perf_counter()
        await self.sync(force_values=True)
        log.info("opcua: address space of %d nodes built in %.2f s", self.space.node_count(),
                 time.perf_counter() - started)
        await ua_server.start()
        self.port = ua_server.bserver.port if ua_server.bserver else config.port
        if config.port == 0:
            self.endpoint = endpoint_url(config, self.port)
        log.info("opcua: serving %s (%s; %d meters, %d groups)", self.endpoint, ", ".join(self._offered()),
                 len(self.values.meter_ids) if self.values else 0, len(self.values.group_ids) if self.values else 0)

    def _policies(self) -> list[ua.SecurityPolicyType]:
        out = [SECURITY[(p, mode)] for p in self.config.secure_policies for mode in self.config.security_modes]
        if "None" in self.config.security_policies:
            log.warning("opcua: security policy None is enabled: messages are neither signed nor encrypted")
            out.append(SECURITY[("None", "")])
        return out

    def _offered(self) -> list[str]:
        secure = [f"{p} {mode}" for p in self.config.secure_policies for mode in self.config.security_modes]
        return secure + (["None"] if "None" in self.config.security_policies else [])

    async def _alarm_generator(self, ua_server: UaServer) -> Any:
        """BalansAlarmEventType, and its generator on the Server object (i=2253),
        which is where SCADA clients subscribe to events."""
        etype = await ua_server.nodes.base_event_type.add_object_type(
            ua.NodeId(m.ALARM_EVENT_TYPE, self.ns), ua.QualifiedName("BalansAlarmEventType", self.ns))
        await etype.write_attribute(ua.AttributeIds.Description, ua.DataValue(ua.Variant(
            ua.LocalizedText("a balans-edge alarm: a new finding of a detector, or another alarm"),
            ua.VariantType.LocalizedText)))
        for name, variant, default in EVENT_FIELDS:
            node = await etype.add_property(ua.NodeId(f"{m.ALARM_EVENT_TYPE}/{name}", self.ns),
                                            ua.QualifiedName(name, self.ns), default, varianttype=variant)
            await node.set_modelling_rule(True)
        return await ua_server.get_event_generator(etype, ua_server.nodes.server)

    async def stop(self) -> None:
        await self.stop_following()
        await self.finish_commands(self.config.method_timeout_s)
        if self.ua is not None:
            with contextlib.suppress(Exception):
                await self.ua.stop()
            self.ua = None
        self.unsubscribe()

    # the registry -----------------------------------------------------------------------------

    async def sync(self, *, force_values: bool = False) -> SyncStats:
        """Apply the registry as it is now to the address space; new live values
        when its meters or groups changed (read from storage)."""
        if self.space is None or self.publisher is None:
            raise RuntimeError("the OPC UA server is not started")
        queries = self.context.queries
        version = await queries.registry_version()
        concentrators = await queries.registry_list("concentrators")
        modules = await queries.registry_list("modules")
        meters = await queries.meters_by_key()
        groups = await queries.registry_list("groups")
        # In a thread: pure Python, but the event loop gets its turns (10,000 meters take about 0.5 s).
        model = await asyncio.to_thread(m.build_model, concentrators, modules, [x for _, x in meters], groups,
                                        self._cache)
        stats = await self.space.apply(model)
        self._registry_version, self._registry_read = version, time.monotonic()
        objects = (meters, groups, await queries.meter_periods())
        if force_values or objects != self._objects or self.values is None:
            await self._new_values(meters, groups)
            self._objects = objects
        if stats.created or stats.deleted or stats.updated or stats.moved:
            log.info("opcua: registry applied: %d nodes created, %d deleted, %d values updated, %d moved",
                     stats.created, stats.deleted, stats.updated, stats.moved)
        self.last_sync = stats
        return stats

    async def _new_values(self, meters: list[Any], groups: list[Any]) -> None:
        values = Values(meters, groups, self.context.tz, self.context.site.completeness_threshold,
                        await resolutions(self.context.queries))
        now = time.time()
        await load_all(values, self.context.queries, now)
        self.values = values
        self._kinds = {meter.meter_id: "meter" for _, meter in meters} | {g.group_id: "group" for g in groups}
        values.ages(now)
        await self._publish()

    async def _publish(self) -> int:
        if self.values is None or self.publisher is None:
            return 0
        return await self.publisher.publish(self.values.columns())

    # following the data -----------------------------------------------------------------------

    async def show(self) -> None:
        await self._publish()

    async def registry_changed(self) -> None:
        await self.sync()

    async def tick(self) -> None:
        """A changed registry is applied; a new hour re-reads the last hour and
        today; the data ages are rewritten every ``age_interval_s``."""
        stale = time.monotonic() - self._registry_read > self.config.registry_poll_s
        if stale or await self.context.registry.registry_version() != self._registry_version:
            await self.sync()
        values = self.values
        if values is None:
            return
        now = time.time()
        publish = await refresh_new_hour(values, self.context.queries, now)
        if now - self._aged >= self.config.age_interval_s:
            self._aged = now
            values.ages(now)
            publish = True
        if publish:
            await self._publish()

    # observers (called by the plugin's hooks) ---------------------------------------------------

    async def on_command(self, command: Command) -> None:
        """A valve or relay command done (from any source): its state variable shows it."""
        if self.values is None:
            return
        async with self._lock:
            self.values.command(command)
            await self._publish()

    async def on_alarm(self, alarm: Alarm) -> None:
        """An alarm as a BalansAlarmEventType event of the Server object."""
        if self._alarms is None or self.space is None:
            return
        data = alarm.data or {}
        subject = str(data.get("subject") or "")
        kind = self._kinds.get(subject)
        source = (self.space.node_id(m.meter_id(subject)) if kind == "meter" else
                  self.space.node_id(m.group_id(subject)) if kind == "group" else ua.NodeId(ua.ObjectIds.Server))
        event = self._alarms.event
        event.SourceNode = source
        event.SourceName = subject or alarm.source
        event.Severity = m.SEVERITY.get(str(alarm.severity), 500)
        event.AlarmId = int(alarm.id or 0)
        event.FindingId = int(data.get("finding_id") or 0)
        event.Kind = str(data.get("kind") or "")
        event.Subject = subject
        event.Detector = alarm.source
        event.GroupId = str(data.get("group_id") or "")
        when = datetime.fromtimestamp(alarm.t, UTC) if alarm.t else None
        await self._alarms.trigger(time_attr=when, message=alarm.message)
        self.events_sent += 1

    # methods ------------------------------------------------------------------------------------

    def _method(self, spec: m.NodeSpec) -> Any:
        """The callback of one meter's valve or relay method."""
        meter = m.registry_id(str(spec.parent).removeprefix("Meters/"))
        code = CommandCode(spec.method)
        object_node = ua.NodeId(str(spec.parent), self.ns)

        async def call(parent: ua.NodeId, *args: ua.Variant) -> ua.CallMethodResult:
            return await self._call(meter, code, spec.name, object_node, parent, args)

        return call

    async def _call(self, meter: str, code: CommandCode, name: str, object_node: ua.NodeId, parent: ua.NodeId,
                    args: tuple[ua.Variant, ...]) -> ua.CallMethodResult:
        def result(status: int, outputs: list[ua.Variant] | None = None,
                   inputs: list[ua.StatusCode] | None = None) -> ua.CallMethodResult:
            return ua.CallMethodResult(StatusCode=ua.StatusCode(status), OutputArguments=outputs or [],
                                       InputArgumentResults=inputs or [])

        login = current_login()
        if parent != object_node:
            return result(ua.StatusCodes.BadMethodInvalid)
        if login is None or not login.may("operator"):
            log.warning("opcua: %s of %s refused: user %s from %s is not an operator", name, meter,
                        login.name if login else "?", request_peer())
            return result(ua.StatusCodes.BadUserAccessDenied)
        if not args:
            return result(ua.StatusCodes.BadArgumentsMissing)
        if len(args) > 1:
            return result(ua.StatusCodes.BadTooManyArguments)
        reason = args[0].Value if isinstance(args[0], ua.Variant) else args[0]
        if not isinstance(reason, str) or not reason.strip():
            return result(ua.StatusCodes.BadInvalidArgument,
                          inputs=[ua.StatusCode(ua.StatusCodes.BadInvalidArgument)])
        command = Command(meter, code, f"opcua:{login.name}", reason.strip())
        task = await self.run_command(self.context.commands.execute(command), self.config.method_timeout_s)
        if task is None:
            return result(ua.StatusCodes.GoodCompletesAsynchronously)
        try:
            executed = task.result()
        except Exception:
            log.exception("opcua: %s of %s failed", name, meter)
            return result(ua.StatusCodes.BadInternalError)
        log.info("opcua: %s of %s by %s: %s %s", name, meter, login.name, executed.outcome, executed.detail)
        if executed.outcome != "done":
            return result(OUTCOME_STATUS.get(executed.outcome, ua.StatusCodes.BadUnexpectedError))
        return result(ua.StatusCodes.Good, [ua.Variant(int(executed.id or 0), ua.VariantType.Int64),
                                            ua.Variant(executed.outcome, ua.VariantType.String),
                                            ua.Variant(executed.detail, ua.VariantType.String)])

    def status(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "port": self.port, "namespace": m.NAMESPACE_URI,
                "nodes": self.space.node_count() if self.space else 0, "values_written": (
                    self.publisher.written if self.publisher else 0), "events": self.events_sent,
                "refresh_failed": self.refresh_failed,
                "sessions": len(self.ua.bserver.clients) if self.ua and self.ua.bserver else 0}
