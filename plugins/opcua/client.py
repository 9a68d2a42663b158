"""Reading pumping-station OPC UA servers as a client.

Each ``[[plugins.opcua.devices]]`` is one server (a station's PLC or its
SCADA gateway), read by an ``OpcuaDevice`` in its own supervised loop:

- **Session.** Connect (with the configured security policy and mode, the
  client's certificate, the trusted server certificate, a user name and
  password), resolve the tags' node ids (a namespace URI to its index, which a
  server may change across restarts), subscribe and start polling. Then
  watch: asyncua reads the server's state every ``watchdog_s`` and tells us
  when the connection is gone; a subscription that sends neither changes nor
  keep-alives for ``stale_after`` keep-alive periods also ends the session.
- **Reconnection.** After a session ends, every tag turns ``comm_fail`` and
  the loop connects again with exponential back-off and jitter (the shared
  ``core.tags.Backoff``), re-creating its subscriptions: no restart is ever
  needed, and many boxes do not reconnect to one server in lock-step. A fault
  in our own code is logged, the device's tags turn ``stale`` and the loop
  starts again after the back-off; other devices are never affected.
- **Values.** A data change (or a polled value) with a Good status is the tag's
  value, scaled, at the server's source timestamp; a Bad or Uncertain status
  makes the tag ``stale`` with the status name as detail (``BadSensorFailure``).
  A subscribed value that does not change is confirmed by the subscription's
  keep-alives, so it is stored again as a heartbeat and a totaliser still
  gives meter readings.

Samples go through the rules shared with the Modbus client
(``core.tags.TagRecorder``): storage on change and as a heartbeat, a
``TagValues`` event, totaliser tags as meter readings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

from asyncua import Client, Node, ua
from asyncua.crypto import security_policies

from balans_edge.core.tags import Backoff, TagQuality, TagRecorder, TagState, mark
from balans_edge.plugins.common.tag_client import TagClient
from balans_edge.plugins.opcua.client_config import DeviceConfig, NodeRef, TagConfig
from balans_edge.plugins.opcua.client_pki import (
    ClientCertificateError,
    ServerNotTrusted,
    default_application_uri,
    ensure_client_certificate,
    first_certificate,
    trusted_server_certificate,
)

log = logging.getLogger(__name__)

wall_clock = time.time
"""Time of samples without a server timestamp, of quality changes, and of meter
creation (replaceable, e.g. to replay hours in a test)."""

POLICIES: dict[str, type[security_policies.SecurityPolicy]] = {
    "Basic256Sha256": security_policies.SecurityPolicyBasic256Sha256,
    "Aes128_Sha256_RsaOaep": security_policies.SecurityPolicyAes128Sha256RsaOaep,
}
MODES = {"Sign": ua.MessageSecurityMode.Sign, "SignAndEncrypt": ua.MessageSecurityMode.SignAndEncrypt}
SESSION_TIMEOUT_MS = 60_000
"""Asked of the server: a session we lost without closing it is dropped there after a minute."""
SESSION_GONE = frozenset({
    ua.StatusCodes.BadSessionIdInvalid, ua.StatusCodes.BadSessionClosed, ua.StatusCodes.BadSessionNotActivated,
    ua.StatusCodes.BadSecureChannelClosed, ua.StatusCodes.BadSecureChannelIdInvalid,
    ua.StatusCodes.BadConnectionClosed, ua.StatusCodes.BadServerHalted, ua.StatusCodes.BadShutdown,
    ua.StatusCodes.BadCommunicationError, ua.StatusCodes.BadTimeout, ua.StatusCodes.BadServerNotConnected,
    ua.StatusCodes.BadNoCommunication, ua.StatusCodes.BadTooManySessions,
})
"""Answers that say the session cannot go on (not that one value is bad)."""


class SessionLost(Exception):
    """The connection or the session went away (or a subscription fell silent)."""


class NodeUnknown(ValueError):
    """A configured node id cannot be put on this server (its namespace URI is unknown there)."""


class NotConnected(Exception):
    """The device has no session now (an actuator's command cannot be delivered)."""


CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, ua.UaError, SessionLost, ServerNotTrusted, ClientCertificateError)
"""What a session ends with when the server (or reaching it) is the problem:
the device's tags are ``comm_fail``. Anything else is a fault of ours."""


def describe(exc: BaseException) -> str:
    """An exception as a tag's detail: OPC UA status names as OPC UA tools show them."""
    if isinstance(exc, ua.UaStatusCodeError) and exc.code is not None:
        return ua.StatusCode(exc.code).name
    text = str(exc)
    if isinstance(exc, TimeoutError):
        return text or "no answer in time"
    return text if isinstance(exc, SessionLost | ServerNotTrusted | ClientCertificateError) or not text else \
        f"{type(exc).__name__}: {text}"


# -- values --------------------------------------------------------------------------------


def _epoch(t: datetime | None) -> float | None:
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    seconds = t.timestamp()
    return seconds if seconds > 0 else None


def sample_time(dv: ua.DataValue) -> float:
    """The source timestamp (the server's, or now, when it gives none), never
    later than now: a station clock running ahead must not date readings in the future."""
    now = wall_clock()
    t = _epoch(dv.SourceTimestamp) or _epoch(dv.ServerTimestamp) or now
    return min(t, now)


def as_number(raw: Any) -> float | None:
    if isinstance(raw, bool):
        return 1.0 if raw else 0.0
    if isinstance(raw, int | float):
        return float(raw)
    return None


def apply(state: TagState, dv: ua.DataValue, read_at: float | None = None) -> None:
    """A DataValue as the tag's new sample: scaled when Good, stale with the
    status name otherwise (Bad and Uncertain alike: the value is not one to act on).

    A change is stamped with its source timestamp. A polled value that did not
    change keeps the source timestamp of its last change, so it is stamped
    ``read_at`` instead: the poll confirmed it then (a heartbeat, like a
    subscription's keep-alive)."""
    t = sample_time(dv)
    status = dv.StatusCode
    if status is not None and not status.is_good():
        state.bad("stale", t, status.name)
        return
    raw = dv.Value.Value if dv.Value is not None else None
    number = as_number(raw)
    tag: TagConfig = state.tag
    if number is None:
        state.bad("stale", t, f"the server sent {type(raw).__name__}, not a number")
        return
    value = tag.scaled(number)
    if not math.isfinite(value):
        state.bad("stale", t, "the server sent a value that is not a number")
        return
    if read_at is not None and state.quality == "good" and state.value == value:
        t = max(t, read_at)
    state.good(value, t, time.monotonic())


# -- one device ---------------------------------------------------------------------------


class _Changes:
    """asyncua's subscription handler: each data change updates its tags at once,
    the recording is batched (``OpcuaDevice._flush``)."""

    def __init__(self, device: OpcuaDevice) -> None:
        self.device = device

    def datachange_notification(self, node: Node, val: Any, data: Any) -> None:
        self.device.on_change(node.nodeid, data.monitored_item.Value)

    def status_change_notification(self, status: ua.StatusChangeNotification) -> None:
        self.device.on_subscription_status(status.Status)


class OpcuaDevice:
    """One server: its session loop, its tags' states, and access for actuators."""

    def __init__(self, config: DeviceConfig, recorder: TagRecorder | None = None) -> None:
        self.config = config
        self.recorder = recorder
        self.states = {t.name: TagState(config.name, t) for t in config.tags}
        self.backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self.client: Client | None = None
        self.namespaces: list[str] = []
        self.connects = 0
        self.connected_at: float | None = None
        self.last_error = ""
        self.restarts = 0
        self.last_crash = ""
        self.reads = 0
        self.notifications = 0
        self._by_node: dict[ua.NodeId, list[TagState]] = {}
        self._subscription: Any = None
        self._subscribed_at = 0.0
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._dirty: dict[str, TagState] = {}
        self._wake = asyncio.Event()
        self.stopping = False
        """Set before the loop is cancelled: a cancellation that a library turned
        into a timeout must not start another connection attempt."""

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def up(self) -> bool:
        return self.client is not None

    # supervision ---------------------------------------------------------------

    async def run(self) -> None:
        """Keep a session to the server, forever: reconnect after every loss."""
        while not self.stopping:
            try:
                await self._session()
            except CONNECTION_ERRORS as exc:
                self.last_error = describe(exc)
                log.info("opcua: %s (%s): %s", self.name, self.config.endpoint, self.last_error)
                self._all("comm_fail", self.last_error)
            except Exception as exc:  # a fault of ours: logged, the loop goes on
                self.restarts += 1
                self.last_crash = self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("opcua: device %s failed", self.name)
                self._all("stale", f"client failed: {self.last_crash}")
            if self.stopping:
                return
            delay = self.backoff.failed(time.monotonic())
            log.info("opcua: %s: next connection attempt in %.1f s", self.name, delay)
            await asyncio.sleep(delay)

    def _all(self, quality: TagQuality, detail: str) -> None:
        mark(self.states.values(), quality, wall_clock(), detail)
        self.note(self.states.values())

    def note(self, states: Any) -> None:
        """Queue samples for recording (storage, bus, ingest) by ``flush_forever``."""
        for s in states:
            self._dirty[s.tag.name] = s
        self._wake.set()

    async def flush_forever(self) -> None:
        """Record queued samples in batches: one transaction for many changes."""
        if self.recorder is None:
            return
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._dirty = list(self._dirty.values()), {}
            try:
                await self.recorder.record(self.name, batch, self.config.store_every_s)
            except Exception:
                log.exception("opcua: recording samples of %s failed", self.name)

    # the session ------------------------------------------------------------------

    async def _session(self) -> None:
        client = await self.connect()
        try:
            self.client = client
            await self._serve(client)
        finally:
            self.client = None
            self._subscription = None
            self.connected_at = None
            await disconnect(client, self.config.timeout_s)

    async def connect(self) -> Client:
        """A new session (a fresh asyncua client per connection: nothing of a broken one carries over)."""
        c = self.config
        client = Client(c.endpoint, timeout=c.timeout_s, watchdog_intervall=c.watchdog_s)
        client.session_timeout = SESSION_TIMEOUT_MS
        client.name = client.description = f"balans-edge ({c.name})"
        client.product_uri = "urn:balans-edge"
        client.application_uri = c.application_uri or default_application_uri()  # a secure one: the certificate's
        if c.username:
            client.set_user(c.username)
            client.set_password(c.password)
        self._lost = asyncio.Event()
        self._lost_reason = ""

        async def lost(exc: Exception) -> None:
            self._session_lost(f"connection lost: {describe(exc)}")

        client.connection_lost_callback = lost
        try:
            if c.secure:
                await self._secure(client)
            async with asyncio.timeout(c.timeout_s * 2):
                await client.connect()
        except BaseException as exc:
            with contextlib.suppress(Exception):
                client.disconnect_socket()
            if isinstance(exc, OSError | TimeoutError):
                raise SessionLost(f"cannot connect to {c.endpoint}: {describe(exc)}") from exc
            raise
        self.connects += 1
        self.connected_at = wall_clock()
        self.last_error = ""
        self.backoff.succeeded()
        log.info("opcua: connected to %s (%s)", self.name, c.describe())
        return client

    async def _secure(self, client: Client) -> None:
        """Certificates: ours (made on first use), the server's (checked against the trusted one)."""
        c = self.config
        cert, key, uri = ensure_client_certificate(c)
        client.application_uri = uri
        async with asyncio.timeout(c.timeout_s):
            endpoints = await client.connect_and_get_server_endpoints()
        policy, mode = POLICIES[c.security_policy], MODES[c.security_mode]
        matching = [e for e in endpoints if e.SecurityPolicyUri == policy.URI and e.SecurityMode == mode]
        if not matching:
            offered = sorted({f"{e.SecurityPolicyUri.rsplit('#', 1)[-1]} {e.SecurityMode.name}" for e in endpoints})
            raise SessionLost(f"the server offers no {c.security_policy} {c.security_mode} endpoint "
                              f"(it offers: {', '.join(offered)})")
        presented = first_certificate(matching[0].ServerCertificate)
        trusted = trusted_server_certificate(c, presented)
        await client.set_security(policy, str(cert), str(key), server_certificate=trusted, mode=mode)

    async def _serve(self, client: Client) -> None:
        """Subscribe, poll and watch until the session ends (by an exception)."""
        self.namespaces = list(await client.get_namespace_array())
        resolved: list[tuple[TagState, ua.NodeId]] = []
        for s in self.states.values():
            try:
                resolved.append((s, self.node_id(s.tag.node)))
            except (NodeUnknown, ua.UaError) as exc:
                s.bad("stale", wall_clock(), str(exc))
                self.note([s])
        subscribed = [(s, n) for s, n in resolved if s.tag.read == "subscription"]
        polled = [(s, n) for s, n in resolved if s.tag.read == "poll"]
        if subscribed:
            await self._subscribe(client, subscribed)
        groups: dict[float, list[tuple[TagState, ua.NodeId]]] = {}
        for s, n in polled:
            groups.setdefault(s.tag.interval_s, []).append((s, n))
        tasks = [asyncio.create_task(self._poll(client, interval, members), name=f"opcua-poll-{self.name}")
                 for interval, members in sorted(groups.items())]
        tasks.append(asyncio.create_task(self._watch(), name=f"opcua-watch-{self.name}"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def node_id(self, ref: NodeRef) -> ua.NodeId:
        """A configured node id on this server (a namespace URI as its index now)."""
        index = ref.namespace_index
        if ref.namespace_uri is not None:
            if ref.namespace_uri not in self.namespaces:
                raise NodeUnknown(f"namespace {ref.namespace_uri} is not on the server")
            index = self.namespaces.index(ref.namespace_uri)
        return ua.NodeId.from_string(ref.with_index(index))

    async def _subscribe(self, client: Client, members: list[tuple[TagState, ua.NodeId]]) -> None:
        """One subscription for the device; one monitored item per node, sampled
        as fast as its fastest tag asks. Its first notifications are the current values."""
        c = self.config
        self._by_node = {}
        fastest: dict[ua.NodeId, float] = {}
        for s, n in members:
            self._by_node.setdefault(n, []).append(s)
            fastest[n] = min(fastest.get(n, math.inf), s.tag.interval_s)
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = c.publishing_interval_s * 1000
        params.RequestedMaxKeepAliveCount = max(1, math.ceil(c.keepalive_s / c.publishing_interval_s))
        params.RequestedLifetimeCount = params.RequestedMaxKeepAliveCount * 3
        params.MaxNotificationsPerPublish = 10000
        params.PublishingEnabled = True
        params.Priority = 0
        sub = await client.create_subscription(params, _Changes(self))
        self._subscription, self._subscribed_at = sub, time.monotonic()
        by_interval: dict[float, list[ua.NodeId]] = {}
        for n, interval in fastest.items():
            by_interval.setdefault(interval, []).append(n)
        for interval, node_ids in by_interval.items():
            results = await sub.subscribe_data_change([client.get_node(n) for n in node_ids],
                                                      sampling_interval=interval * 1000)
            for n, result in zip(node_ids, results, strict=True):
                if isinstance(result, ua.StatusCode):
                    states = self._by_node.pop(n)
                    mark(states, "stale", wall_clock(), f"not subscribed: {result.name}")
                    self.note(states)

    def on_change(self, node_id: ua.NodeId, dv: ua.DataValue) -> None:
        self.notifications += 1
        states = self._by_node.get(node_id, [])
        for s in states:
            apply(s, dv)
        self.note(states)

    def on_subscription_status(self, status: ua.StatusCode) -> None:
        """The server ended the subscription (or the library gave up on it): start a new session."""
        if not status.is_good():
            self._session_lost(f"subscription ended: {status.name}")

    def _session_lost(self, reason: str) -> None:
        """Tell the watch loop to end the session; the first reason is the one reported
        (a lost connection also ends the subscriptions, a moment later)."""
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()

    async def _poll(self, client: Client, interval: float, members: list[tuple[TagState, ua.NodeId]]) -> None:
        """Read a group's nodes in one request every ``interval``."""
        nodes = [client.get_node(n) for _, n in members]
        states = [s for s, _ in members]
        due = time.monotonic()
        while True:
            try:
                values = await client.read_attributes(nodes)
            except ua.UaStatusCodeError as exc:
                if exc.code in SESSION_GONE:
                    raise
                mark(states, "stale", wall_clock(), describe(exc))
            else:
                self.reads += 1
                read_at = wall_clock()
                for s, dv in zip(states, values, strict=True):
                    apply(s, dv, read_at)
            self.note(states)
            due += interval
            now = time.monotonic()
            if due <= now:  # overran: skip the missed polls rather than burst
                due = now + interval
            await asyncio.sleep(due - now)

    async def _watch(self) -> None:
        """Every ``watchdog_s``: end the session if it was lost or its subscription
        fell silent; confirm unchanged subscribed values; mark overdue polled tags stale."""
        c = self.config
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(c.watchdog_s):
                    await self._lost.wait()
            if self._lost.is_set():
                raise SessionLost(self._lost_reason)
            mono, now = time.monotonic(), wall_clock()
            self._check_subscription(mono)
            self._confirm_subscribed(now, mono)
            overdue = [s for s in self.states.values()
                       if s.tag.read == "poll" and s.overdue(mono, c.stale_after)]
            for s in overdue:
                s.bad("stale", now, f"no fresh value for {mono - (s.last_good_mono or mono):.1f} s")
            self.note(overdue)

    def _silence_limit(self) -> float:
        c = self.config
        return c.stale_after * max(c.keepalive_s, c.publishing_interval_s) + c.publishing_interval_s

    def _check_subscription(self, mono: float) -> None:
        sub = self._subscription
        if sub is None:
            return
        last = sub.last_publish_at or self._subscribed_at
        if mono - last > self._silence_limit():
            raise SessionLost(f"the subscription sent neither changes nor keep-alives for {mono - last:.1f} s")

    def _confirm_subscribed(self, now: float, mono: float) -> None:
        """A subscribed value that did not change is still the value (the keep-alives
        say the subscription is alive): restamp it when a heartbeat is due, so it
        is stored again and a totaliser keeps giving meter readings."""
        if self._subscription is None:
            return
        due = []
        for states in self._by_node.values():
            for s in states:
                every = heartbeat_s(s.tag, self.config.store_every_s)
                if s.quality == "good" and s.value is not None and every and now - s.t >= every:
                    s.good(s.value, now, mono)
                    due.append(s)
        self.note(due)

    # actuators ---------------------------------------------------------------------------

    def session(self) -> Client:
        if self.client is None:
            raise NotConnected(f"{self.name} is not connected" + (f": {self.last_error}" if self.last_error else ""))
        return self.client

    async def read(self, ref: NodeRef) -> ua.DataValue:
        client = self.session()
        (dv,) = await client.read_attributes([client.get_node(self.node_id(ref))])
        return dv

    async def write(self, ref: NodeRef, value: Any) -> None:
        """Write with the node's own DataType (a PLC's Int16 refuses an Int64), and
        without timestamps (many PLC servers refuse a written SourceTimestamp)."""
        client = self.session()
        node = client.get_node(self.node_id(ref))
        vtype = await node.read_data_type_as_variant_type()
        await node.write_value(ua.DataValue(ua.Variant(convert(value, vtype), vtype)))

    async def call(self, object_ref: NodeRef, method_ref: NodeRef, args: Sequence[Any]) -> list[Any]:
        """Call a method with its arguments typed as the method declares them."""
        client = self.session()
        parent, method = client.get_node(self.node_id(object_ref)), client.get_node(self.node_id(method_ref))
        types = await _argument_types(method) if args else []
        variants = [ua.Variant(convert(a, t), t) if t is not None else ua.Variant(a)
                    for a, t in zip(args, types + [None] * (len(args) - len(types)), strict=True)]
        result = await parent.call_method(method.nodeid, *variants)
        return result if isinstance(result, list) else [] if result is None else [result]

    def status(self) -> dict[str, Any]:
        c = self.config
        reads = {"subscription": sum(1 for t in c.tags if t.read == "subscription"),
                 "poll": sum(1 for t in c.tags if t.read == "poll")}
        return {"device": self.name, "endpoint": c.endpoint, "security": c.describe(), "up": self.up,
                "connects": self.connects, "connected_at": self.connected_at, "last_error": self.last_error,
                "reconnect_in_s": round(self.backoff.wait(time.monotonic()), 2), "restarts": self.restarts,
                "last_crash": self.last_crash, "tags": len(self.states), "tags_by_read": reads,
                "reads": self.reads, "notifications": self.notifications}


def heartbeat_s(tag: TagConfig, store_every_s: float) -> float:
    """How often an unchanged subscribed value is confirmed (0: never)."""
    periods = [p for p in (store_every_s, tag.reading_every_s if tag.meter_id else 0.0) if p > 0]
    return min(periods) if periods else 0.0


async def _argument_types(method: Node) -> list[ua.VariantType | None]:
    """The built-in types of a method's input arguments (None where it is not one)."""
    try:
        arguments = await (await method.get_child("0:InputArguments")).read_value()
    except ua.UaError:
        return []
    out: list[ua.VariantType | None] = []
    for a in arguments or []:
        dt = a.DataType
        builtin = dt.NamespaceIndex == 0 and isinstance(dt.Identifier, int) and 1 <= dt.Identifier <= 25
        out.append(ua.VariantType(dt.Identifier) if builtin else None)
    return out


INTEGER_TYPES = {ua.VariantType.SByte, ua.VariantType.Byte, ua.VariantType.Int16, ua.VariantType.UInt16,
                 ua.VariantType.Int32, ua.VariantType.UInt32, ua.VariantType.Int64, ua.VariantType.UInt64}


def convert(value: Any, vtype: ua.VariantType) -> Any:
    """A configured value (TOML true, 1, 2.5, "text") as the Python value asyncua
    encodes with ``vtype``."""
    if vtype == ua.VariantType.Boolean:
        return bool(value)
    if vtype in INTEGER_TYPES:
        return int(value)
    if vtype in (ua.VariantType.Float, ua.VariantType.Double):
        return float(value)
    if vtype == ua.VariantType.String:
        return str(value)
    return value


async def disconnect(client: Client, wait_s: float) -> None:
    """Close the session if the server still answers; drop the socket in any case."""
    client.connection_lost_callback = None
    try:
        async with asyncio.timeout(wait_s):
            await client.disconnect()
    except Exception:  # a dead server cannot be told goodbye
        with contextlib.suppress(Exception):
            client.disconnect_socket()


# -- the component ---------------------------------------------------------------------------


class OpcuaClient(TagClient[DeviceConfig, OpcuaDevice]):
    """The component: one supervised session loop (and recorder) per device."""

    name = "opcua-client"
    protocol = "opcua"

    async def start(self) -> None:
        await self.begin(wall_clock())
        self.devices = {c.name: OpcuaDevice(c, self.recorder) for c in self.configs}
        for d in self.devices.values():
            self.run(d.run(), f"opcua-device-{d.name}")
            self.run(d.flush_forever(), f"opcua-record-{d.name}")

    async def stop(self) -> None:
        for d in self.devices.values():
            d.stopping = True
        await self.stop_tasks()

    def states(self) -> Iterator[TagState]:
        return (s for d in self.devices.values() for s in d.states.values())

    def row(self, state: TagState) -> dict[str, Any]:
        return {**state.row(), "node_id": state.tag.node_id, "read": state.tag.read}


async def read_once(config: DeviceConfig) -> list[TagState]:
    """Every tag of a device read once (whatever its read mode): commissioning
    from the command line, before the server reads it for real."""
    states = [TagState(config.name, t) for t in config.tags]
    device = OpcuaDevice(config)
    try:
        client = await device.connect()
    except CONNECTION_ERRORS as exc:
        mark(states, "comm_fail", wall_clock(), describe(exc))
        return states
    try:
        device.namespaces = list(await client.get_namespace_array())
        for s in states:
            try:
                node = client.get_node(device.node_id(s.tag.node))
            except (NodeUnknown, ua.UaError) as exc:
                s.bad("stale", wall_clock(), str(exc))
                continue
            (dv,) = await client.read_attributes([node])
            apply(s, dv)
    finally:
        await disconnect(client, config.timeout_s)
    return states
