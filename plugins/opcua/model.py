"""The address space as data: which nodes the registry gives, with which ids,
types, units and static values.

Nothing here touches a server. ``build_model`` turns the registry into
``NodeSpec`` records grouped by the registry object that owns them (a
meter, a group, a module, ...); ``space.py`` puts them into asyncua's address
space and later applies the difference when the registry changes. The
records are compared, not rebuilt: an object whose registry entry did not
change keeps the very same tuple of records (``SpecCache``), so a registry of
ten thousand meters is compared in milliseconds.

NodeIds are strings in our namespace derived from registry ids and fixed
names (``Meters/W-17/Value``), never counters: a SCADA tag list written
against them stays valid across restarts and registry changes. A registry
id is one part of the path, with ``/`` and ``%`` escaped (``id_part``), so
no registry can give two nodes one id. The layout,
names, types and units are a contract with integrators (docs/opcua.md):
change them deliberately.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from asyncua import ua

from balans_edge.core.balance_figures import flag_bits_text
from balans_edge.core.model import Concentrator, Group, Meter, RadioModule
from balans_edge.core.times import utc

NAMESPACE_URI = "urn:balans-edge:opcua"
"""Our namespace; its index is 2 on our server (resolve it by URI all the same)."""

ROOT = "Balans"
CONCENTRATORS = "Balans/Concentrators"
METERS = "Balans/Meters"
GROUPS = "Balans/Groups"
UNASSIGNED = "Balans/UnassignedModules"

METER_TYPE = "Types/MeterType"
GROUP_TYPE = "Types/BalanceGroupType"
PERIOD_TYPE = "Types/BalancePeriodType"
MODULE_TYPE = "Types/RadioModuleType"
CONCENTRATOR_TYPE = "Types/ConcentratorType"
ALARM_EVENT_TYPE = "Types/BalansAlarmEventType"

OBJECT, VARIABLE, METHOD, OBJECT_TYPE = (int(ua.NodeClass.Object), int(ua.NodeClass.Variable),
                                         int(ua.NodeClass.Method), int(ua.NodeClass.ObjectType))
Ids = ua.ObjectIds
V = ua.VariantType

UNECE = "http://www.opcfoundation.org/UA/units/un/cefact"
UNIT_CODES = {"m3": ("MTQ", "m³", "cubic metre"), "kWh": ("KWH", "kWh", "kilowatt hour"),
              "GJ": ("GV", "GJ", "gigajoule"), "%": ("P1", "%", "percent"), "s": ("SEC", "s", "second"),
              "mV": ("2Z", "mV", "millivolt")}
"""Our units -> UN/CEFACT common code (OPC 10000-8 5.6.3), display name, description."""

METER_METHODS = {"CloseValve": ("valve", "valve_close", "Close the meter's valve"),
                 "OpenValve": ("valve", "valve_open", "Open the meter's valve"),
                 "ShedLoad": ("relay", "relay_off", "Switch the meter's load relay off"),
                 "RestoreLoad": ("relay", "relay_on", "Switch the meter's load relay back on")}
"""Method name -> (the meter flag it needs, the command code it issues, description)."""

STATUS_BITS = ("0 magnet, 1 tamper, 2 reverse flow, 3 leak, 4 low battery, 5 valve closed, 6 cable cut, "
               "7 counter reset, 8 relay off")
SEVERITY = {"info": 200, "warning": 500, "critical": 800}
"""Alarm severity -> OPC UA event Severity (1..1000)."""


@functools.cache
def eu_information(unit: str) -> ua.EUInformation:
    """EngineeringUnits of a unit: UN/CEFACT where it has a code; otherwise
    UnitId -1 in our namespace with the unit's name (Gcal has no code).
    One object per unit, shared by every node (nobody changes it)."""
    code = UNIT_CODES.get(unit)
    if code is None:
        return ua.EUInformation(NamespaceUri=NAMESPACE_URI, UnitId=-1, DisplayName=ua.LocalizedText(unit),
                                Description=ua.LocalizedText(unit))
    unit_id = 0
    for c in code[0]:
        unit_id = (unit_id << 8) | ord(c)
    return ua.EUInformation(NamespaceUri=UNECE, UnitId=unit_id, DisplayName=ua.LocalizedText(code[1]),
                            Description=ua.LocalizedText(code[2]))


@dataclass(slots=True, eq=True)
class NodeSpec:
    """One node: enough to create it, and to tell what changed since.

    Treated as immutable (``SpecCache`` shares them between models); not a
    frozen dataclass only because frozen construction doubled the time to
    build the model of 10,000 meters."""

    id: str
    """String identifier in our namespace."""
    parent: str | int
    """Our id of the parent, or a numeric id of namespace 0 (85: Objects)."""
    reference: int
    """Reference type from the parent (Organizes, HasComponent, HasProperty, HasSubtype)."""
    node_class: int
    name: str
    """Browse name (in our namespace unless ``standard_name``)."""
    type_def: str | int = 0
    data_type: int = 0
    variant: int = 0
    value: Any = None
    """Static value (properties, registry data); None for live values."""
    value_rank: int = -1
    description: str = ""
    display: str = ""
    standard_name: bool = False
    """Browse name in namespace 0 (EngineeringUnits, TrueState, InputArguments, ...)."""
    live: bool = False
    """Written by the value publisher, not from the registry."""
    modelling_rule: int = 0
    """Only for instance declarations of our types (78 Mandatory, 80 Optional)."""
    organized_by: tuple[str, ...] = ()
    """Other nodes with an Organizes reference to this one (a module to its meters)."""
    method: str = ""
    """For methods: the command code it issues."""

    def shape(self) -> tuple[Any, ...]:
        """What nodes may share (attributes but the value, one-way references)."""
        return (self.node_class, self.name, self.display, self.description, self.standard_name, self.type_def,
                self.data_type, self.variant, self.value_rank, self.modelling_rule)

    def structure(self) -> tuple[Any, ...]:
        """What cannot change in place: a node whose structure changes is made anew."""
        return (self.node_class, self.name, self.standard_name, self.type_def, self.data_type, self.variant,
                self.value_rank, self.method)


# building blocks ---------------------------------------------------------------------------


def folder(node_id: str, parent: str | int, name: str, description: str) -> NodeSpec:
    return NodeSpec(node_id, parent, Ids.Organizes, OBJECT, name, Ids.FolderType, description=description)


def prop(parent: str, name: str, data_type: int, variant: int, value: Any, description: str = "",
         rule: int = 0) -> NodeSpec:
    return NodeSpec(f"{parent}/{name}", parent, Ids.HasProperty, VARIABLE, name, Ids.PropertyType, data_type, variant,
                    value, description=description, modelling_rule=rule)


def analog(parent: str, name: str, unit: str, description: str, rule: int = 0, data_type: int = Ids.Double,
           variant: int = V.Double) -> tuple[NodeSpec, ...]:
    """A live number with its EngineeringUnits (BaseAnalogType)."""
    node = NodeSpec(f"{parent}/{name}", parent, Ids.HasComponent, VARIABLE, name, Ids.BaseAnalogType, data_type,
                    variant, live=True, description=description, modelling_rule=rule)
    units = NodeSpec(f"{parent}/{name}/EngineeringUnits", node.id, Ids.HasProperty, VARIABLE, "EngineeringUnits",
                     Ids.PropertyType, Ids.EUInformation, V.ExtensionObject, eu_information(unit), standard_name=True,
                     modelling_rule=rule and Ids.ModellingRule_Mandatory)
    return node, units


def live(parent: str, name: str, data_type: int, variant: int, description: str, rule: int = 0) -> NodeSpec:
    return NodeSpec(f"{parent}/{name}", parent, Ids.HasComponent, VARIABLE, name, Ids.BaseDataVariableType, data_type,
                    variant, live=True, description=description, modelling_rule=rule)


def two_state(parent: str, name: str, true: str, false: str, description: str, rule: int = 0) -> tuple[NodeSpec, ...]:
    """A live Boolean with its state names (TwoStateDiscreteType)."""
    node = NodeSpec(f"{parent}/{name}", parent, Ids.HasComponent, VARIABLE, name, Ids.TwoStateDiscreteType, Ids.Boolean,
                    V.Boolean, live=True, description=description, modelling_rule=rule)
    mandatory = rule and Ids.ModellingRule_Mandatory
    return (node,
            NodeSpec(f"{node.id}/TrueState", node.id, Ids.HasProperty, VARIABLE, "TrueState", Ids.PropertyType,
                     Ids.LocalizedText, V.LocalizedText, ua.LocalizedText(true), standard_name=True,
                     modelling_rule=mandatory),
            NodeSpec(f"{node.id}/FalseState", node.id, Ids.HasProperty, VARIABLE, "FalseState", Ids.PropertyType,
                     Ids.LocalizedText, V.LocalizedText, ua.LocalizedText(false), standard_name=True,
                     modelling_rule=mandatory))


def argument(name: str, data_type: int, description: str) -> ua.Argument:
    return ua.Argument(Name=name, DataType=ua.NodeId(data_type), ValueRank=-1, ArrayDimensions=[],
                       Description=ua.LocalizedText(description))


REASON_ARGUMENT = argument("Reason", Ids.String, "why: written to the command audit (required)")
OUTPUT_ARGUMENTS = [argument("CommandId", Ids.Int64, "id of the command in the audit journal"),
                    argument("Outcome", Ids.String, "done (the other outcomes are answered with a Bad status)"),
                    argument("Detail", Ids.String, "what the actuator reported")]


def method(parent: str, name: str, code: str, description: str, rule: int = 0) -> tuple[NodeSpec, ...]:
    node = NodeSpec(f"{parent}/{name}", parent, Ids.HasComponent, METHOD, name, description=description,
                    modelling_rule=rule, method=code)
    mandatory = rule and Ids.ModellingRule_Mandatory
    return (node,
            NodeSpec(f"{node.id}/InputArguments", node.id, Ids.HasProperty, VARIABLE, "InputArguments",
                     Ids.PropertyType, Ids.Argument, V.ExtensionObject, [REASON_ARGUMENT], value_rank=1,
                     standard_name=True, modelling_rule=mandatory),
            NodeSpec(f"{node.id}/OutputArguments", node.id, Ids.HasProperty, VARIABLE, "OutputArguments",
                     Ids.PropertyType, Ids.Argument, V.ExtensionObject, OUTPUT_ARGUMENTS, value_rank=1,
                     standard_name=True, modelling_rule=mandatory))


def _rule(declaration: bool, optional: bool = False) -> int:
    if not declaration:
        return 0
    return Ids.ModellingRule_Optional if optional else Ids.ModellingRule_Mandatory


# objects -------------------------------------------------------------------------------------


def id_part(ident: str) -> str:
    """A registry id as one part of a NodeId: ``%`` becomes ``%25``, then ``/``
    becomes ``%2F``, so no part holds the separator and every NodeId names one
    node (meter ``W-1/Status`` is ``Meters/W-1%2FStatus``, not meter ``W-1``'s
    Status variable). An id with neither character is used as it is (Cyrillic
    too): those NodeIds never change. Written out rather than with
    ``urllib.parse.quote``, which would also encode every non-ASCII letter."""
    return ident.replace("%", "%25").replace("/", "%2F")


def registry_id(part: str) -> str:
    """The registry id of a NodeId part made by ``id_part``: an escaped part
    holds ``%`` only in ``%25`` and ``%2F``, which is what ``unquote`` reverses."""
    return unquote(part)


def meter_id(meter: str) -> str:
    return f"Meters/{id_part(meter)}"


def group_id(group: str) -> str:
    return f"Groups/{id_part(group)}"


def module_id(module: int) -> str:
    return f"Modules/{module}"


def concentrator_id(concentrator: int) -> str:
    return f"Concentrators/{concentrator}"


def meter_members(base: str, unit: str, flags: Iterable[str], declaration: bool = False) -> tuple[NodeSpec, ...]:
    """The variables, properties and methods of a meter (or of MeterType when
    ``declaration``: every optional member, with modelling rules)."""
    r, opt = _rule(declaration), _rule(declaration, optional=True)
    out: list[NodeSpec] = [
        *analog(base, "Value", unit, "register (dial) reading of the newest stored reading; its source timestamp "
                                     "is the time it last changed (freshness: LastReadingTime, DataAge)", r),
        *analog(base, "LastHour", unit, "consumption in the last complete hour (UTC): Good measured, "
                                        "Uncertain_SubstituteValue estimated, Bad_NoData missing", r),
        live(base, "LastHourStart", Ids.DateTime, V.DateTime, "start of the hour of LastHour", r),
        live(base, "Status", Ids.UInt16, V.UInt16, f"module status bits of the newest reading: {STATUS_BITS}", r),
        *analog(base, "DataAge", "s", "seconds since the newest stored reading (rewritten every age_interval_s)",
                r, Ids.UInt32, V.UInt32),
        live(base, "LastReadingTime", Ids.DateTime, V.DateTime, "time of the newest stored reading", r),
    ]
    if declaration or "valve" in flags:
        out += two_state(base, "Valve", "open", "closed", "valve state: the newer of the last command done and "
                                                          "the newest reading's status", opt)
        out += method(base, "CloseValve", "valve_close", METER_METHODS["CloseValve"][2], opt)
        out += method(base, "OpenValve", "valve_open", METER_METHODS["OpenValve"][2], opt)
    if declaration or "relay" in flags:
        out += two_state(base, "Relay", "on", "off", "load relay state: the newer of the last command done and "
                                                     "the newest reading's status", opt)
        out += method(base, "ShedLoad", "relay_off", METER_METHODS["ShedLoad"][2], opt)
        out += method(base, "RestoreLoad", "relay_on", METER_METHODS["RestoreLoad"][2], opt)
    return tuple(out)


def meter_specs(meter: Meter, module_present: bool) -> tuple[NodeSpec, ...]:
    base = meter_id(meter.meter_id)
    organized = (module_id(meter.module_id),) if module_present and meter.module_id is not None else ()
    obj = NodeSpec(base, METERS, Ids.Organizes, OBJECT, meter.meter_id, METER_TYPE,
                   description=f"{meter.resource} meter, {meter.unit}", organized_by=organized)
    return (
        obj,
        *meter_members(base, meter.unit, meter.flags),
        prop(base, "Resource", Ids.String, V.String, str(meter.resource)),
        prop(base, "PulseWeight", Ids.Double, V.Double, float(meter.pulse_weight), f"{meter.unit} per pulse"),
        prop(base, "ModuleId", Ids.UInt32, V.UInt32, meter.module_id),
        prop(base, "Channel", Ids.Byte, V.Byte, meter.channel),
        prop(base, "GroupId", Ids.String, V.String, meter.group_id),
    )


PERIOD_VARIABLES = ("Input", "Consumed", "Imbalance", "LossPercent", "Completeness", "Flags", "Start", "Hours")


def period_members(base: str, unit: str, declaration: bool = False) -> tuple[NodeSpec, ...]:
    r = _rule(declaration)
    return (
        *analog(base, "Input", unit, "what flowed in (Bad_NoData while an input meter is missing; "
                                     "Uncertain_SubstituteValue when estimated)", r),
        *analog(base, "Consumed", unit, "what the members consumed", r),
        *analog(base, "Imbalance", unit, "Input - Consumed (Bad_NoData when the input is unknown)", r),
        *analog(base, "LossPercent", "%", "Imbalance as a share of Input (Bad_NoData when the input is unknown or "
                                          "not positive)", r),
        *analog(base, "Completeness", "%", "members measured or estimated (Bad_NoData without members)", r),
        live(base, "Flags", Ids.UInt16, V.UInt16, f"bits as in the HTTP API's flags: {flag_bits_text()}", r),
        live(base, "Start", Ids.DateTime, V.DateTime, "start of the period", r),
        live(base, "Hours", Ids.UInt16, V.UInt16, "complete hours counted", r),
    )


def group_members(base: str, unit: str, declaration: bool = False) -> tuple[NodeSpec, ...]:
    r = _rule(declaration)
    out: list[NodeSpec] = []
    for name, what in (("LastHour", "the last complete hour (UTC)"),
                       ("Today", "today's complete hours (site timezone)")):
        period = NodeSpec(f"{base}/{name}", base, Ids.HasComponent, OBJECT, name, PERIOD_TYPE,
                          description=f"balance of {what}", modelling_rule=r)
        out += [period, *period_members(period.id, unit)]
    return tuple(out)


def group_specs(group: Group, parent: str | None) -> tuple[NodeSpec, ...]:
    base = group_id(group.group_id)
    return (
        NodeSpec(base, group_id(parent) if parent else GROUPS, Ids.Organizes, OBJECT, group.group_id, GROUP_TYPE,
                 display=group.name or group.group_id, description=f"{group.level} balance group, {group.unit}"),
        prop(base, "Name", Ids.String, V.String, group.name),
        prop(base, "Level", Ids.String, V.String, group.level),
        prop(base, "Resource", Ids.String, V.String, str(group.resource)),
        prop(base, "LossNormPercent", Ids.Double, V.Double, group.loss_norm_pct, "imbalance share accepted as normal"),
        *group_members(base, group.unit),
    )


def module_members(base: str, module: RadioModule | None, declaration: bool = False) -> tuple[NodeSpec, ...]:
    r = _rule(declaration)
    m = module or RadioModule(0)

    def var(name: str, data_type: int, variant: int, value: Any, description: str) -> NodeSpec:
        return NodeSpec(f"{base}/{name}", base, Ids.HasComponent, VARIABLE, name, Ids.BaseDataVariableType, data_type,
                        variant, value, description=description, modelling_rule=r)

    return (
        prop(base, "ModuleId", Ids.UInt32, V.UInt32, m.module_id, rule=r),
        prop(base, "Channels", Ids.Byte, V.Byte, m.channels, "bit i-1 set: input i is used", rule=r),
        prop(base, "Firmware", Ids.String, V.String, m.firmware, rule=r),
        var("ParentModuleId", Ids.UInt32, V.UInt32, m.parent_id, "next hop towards the concentrator (null: direct)"),
        var("Hops", Ids.Byte, V.Byte, m.hops, "radio hops to the concentrator"),
        var("Rssi", Ids.Int16, V.Int16, m.rssi, "received signal strength, dBm"),
        var("BatteryVoltage", Ids.UInt16, V.UInt16, m.battery_mv, "battery voltage, mV"),
        var("LastSeen", Ids.DateTime, V.DateTime, None if m.last_seen is None else utc(m.last_seen),
            "when the module was last heard"),
    )


def module_specs(module: RadioModule, concentrator_present: bool) -> tuple[NodeSpec, ...]:
    base = module_id(module.module_id)
    parent = (f"{concentrator_id(module.concentrator_id)}/Modules"
              if concentrator_present and module.concentrator_id is not None else UNASSIGNED)
    return (NodeSpec(base, parent, Ids.Organizes, OBJECT, str(module.module_id), MODULE_TYPE,
                     description="DMesh radio module; organizes the meters on its inputs"),
            *module_members(base, module))


def concentrator_specs(c: Concentrator) -> tuple[NodeSpec, ...]:
    base = concentrator_id(c.concentrator_id)
    return (NodeSpec(base, CONCENTRATORS, Ids.Organizes, OBJECT, str(c.concentrator_id), CONCENTRATOR_TYPE,
                     display=c.name or str(c.concentrator_id), description=c.description),
            *concentrator_members(base, c))


def concentrator_members(base: str, c: Concentrator | None, declaration: bool = False) -> tuple[NodeSpec, ...]:
    r = _rule(declaration)
    c = c or Concentrator(0)
    return (prop(base, "ConcentratorId", Ids.UInt32, V.UInt32, c.concentrator_id, rule=r),
            prop(base, "Name", Ids.String, V.String, c.name, rule=r),
            prop(base, "Site", Ids.String, V.String, c.site, rule=r),
            NodeSpec(f"{base}/Modules", base, Ids.Organizes, OBJECT, "Modules", Ids.FolderType,
                     description="radio modules of this concentrator", modelling_rule=r))


# types ---------------------------------------------------------------------------------------------


def type_specs() -> tuple[NodeSpec, ...]:
    """Our object types with their instance declarations, so clients can browse
    by type and read what every instance has."""

    def object_type(node_id: str, name: str, description: str) -> NodeSpec:
        return NodeSpec(node_id, Ids.BaseObjectType, Ids.HasSubtype, OBJECT_TYPE, name, description=description)

    return (
        object_type(METER_TYPE, "MeterType", "a utility meter: register value, last hour, status, valve, relay"),
        *meter_members(METER_TYPE, "m3", (), declaration=True),
        prop(METER_TYPE, "Resource", Ids.String, V.String, "", rule=Ids.ModellingRule_Mandatory),
        prop(METER_TYPE, "PulseWeight", Ids.Double, V.Double, 0.0, rule=Ids.ModellingRule_Mandatory),
        prop(METER_TYPE, "ModuleId", Ids.UInt32, V.UInt32, 0, rule=Ids.ModellingRule_Mandatory),
        prop(METER_TYPE, "Channel", Ids.Byte, V.Byte, 0, rule=Ids.ModellingRule_Mandatory),
        prop(METER_TYPE, "GroupId", Ids.String, V.String, "", rule=Ids.ModellingRule_Mandatory),
        object_type(PERIOD_TYPE, "BalancePeriodType", "a group's balance over one period"),
        *period_members(PERIOD_TYPE, "m3", declaration=True),
        object_type(GROUP_TYPE, "BalanceGroupType", "a balance group: input, consumed, imbalance and loss of the "
                                                    "last hour and of today; child groups organized below it"),
        *(s for s in group_members(GROUP_TYPE, "m3", declaration=True) if s.parent == GROUP_TYPE),
        *(prop(GROUP_TYPE, n, Ids.String, V.String, "", rule=Ids.ModellingRule_Mandatory)
          for n in ("Name", "Level", "Resource")),
        prop(GROUP_TYPE, "LossNormPercent", Ids.Double, V.Double, 0.0, rule=Ids.ModellingRule_Mandatory),
        object_type(MODULE_TYPE, "RadioModuleType", "a DMesh radio module"),
        *module_members(MODULE_TYPE, None, declaration=True),
        object_type(CONCENTRATOR_TYPE, "ConcentratorType", "a DMesh concentrator"),
        *concentrator_members(CONCENTRATOR_TYPE, None, declaration=True),
    )


def root_specs() -> tuple[NodeSpec, ...]:
    return (
        folder(ROOT, Ids.ObjectsFolder, "Balans", "balans-edge: meters, balance groups and the radio network"),
        folder(CONCENTRATORS, ROOT, "Concentrators", "DMesh concentrators and their radio modules"),
        folder(UNASSIGNED, ROOT, "UnassignedModules", "radio modules not assigned to a concentrator"),
        folder(METERS, ROOT, "Meters", "every meter of the registry (MeterType)"),
        folder(GROUPS, ROOT, "Groups", "top-level balance groups (BalanceGroupType), child groups below them"),
    )


# the whole model --------------------------------------------------------------------------------


@dataclass
class Model:
    """Every node of the registry, by owner (a registry object), parents first."""

    owners: dict[str, tuple[NodeSpec, ...]] = field(default_factory=dict)
    meters: list[Meter] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)

    def specs(self) -> Iterable[NodeSpec]:
        for specs in self.owners.values():
            yield from specs

    def node_count(self) -> int:
        return sum(len(s) for s in self.owners.values())


class SpecCache:
    """Specs of registry objects by (object, context): an unchanged object gets
    the very same tuple, which the diff recognises by identity."""

    def __init__(self) -> None:
        self._entries: dict[Any, tuple[NodeSpec, ...]] = {}

    def get(self, key: Any, make: Any) -> tuple[NodeSpec, ...]:
        specs = self._fresh.get(key) or self._entries.get(key)
        if specs is None:
            specs = make()
        self._fresh[key] = specs
        return specs

    def begin(self) -> None:
        self._fresh: dict[Any, tuple[NodeSpec, ...]] = {}

    def end(self) -> None:
        """Forget objects that are gone or changed (bounded by the registry's size)."""
        self._entries = self._fresh


def group_order(groups: Sequence[Group]) -> list[tuple[Group, str | None]]:
    """Groups parents first, each with the parent it is organized under (None:
    the Groups folder; also for a parent that is missing or in a cycle)."""
    by_id = {g.group_id: g for g in groups}
    depth: dict[str, int] = {}

    def depth_of(gid: str, seen: frozenset[str] = frozenset()) -> int:
        if gid in depth:
            return depth[gid]
        parent = by_id[gid].parent_id
        d = 0 if parent not in by_id or gid in seen or parent in seen else depth_of(parent, seen | {gid}) + 1
        depth[gid] = d
        return d

    ordered = sorted(by_id, key=lambda g: (depth_of(g), g))
    out = []
    for gid in ordered:
        parent = by_id[gid].parent_id
        out.append((by_id[gid], parent if parent in by_id and depth[gid] > 0 else None))
    return out


def build_model(concentrators: Sequence[Concentrator], modules: Sequence[RadioModule], meters: Sequence[Meter],
                groups: Sequence[Group], cache: SpecCache) -> Model:
    cache.begin()
    model = Model(meters=list(meters), groups=list(groups))
    model.owners[ROOT] = cache.get("root", root_specs)
    present_c = {c.concentrator_id for c in concentrators}
    present_m = {m.module_id for m in modules}
    for c in concentrators:
        model.owners[concentrator_id(c.concentrator_id)] = cache.get(("c", c), lambda c=c: concentrator_specs(c))
    for m in modules:
        inside = m.concentrator_id in present_c
        model.owners[module_id(m.module_id)] = cache.get(("m", m, inside), lambda m=m, i=inside: module_specs(m, i))
    for meter in meters:
        has = meter.module_id in present_m
        model.owners[meter_id(meter.meter_id)] = cache.get(("meter", meter, has),
                                                           lambda x=meter, h=has: meter_specs(x, h))
    for group, parent in group_order(groups):
        model.owners[group_id(group.group_id)] = cache.get(("g", group, parent),
                                                           lambda g=group, p=parent: group_specs(g, p))
    cache.end()
    return model
