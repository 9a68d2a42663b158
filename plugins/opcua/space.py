"""The model put into asyncua's address space, and kept in step with it.

asyncua adds a node through its AddNodes service, which for every node
searches the parent's references twice (duplicate browse names, duplicate
references): ten thousand meters in one folder cost O(n²), 70 to 90 s for
10,000 plain variables on the benchmark machine (bench/opcua.py). Deleting a
node scans every node of the server. So nodes are written here straight into
the address space's node table, with the attributes and references asyncua
itself would give them (checked by the tests through an independent client:
browse, read, translate browse paths, subscriptions, method calls). The
model guarantees what asyncua's checks are for: ids are unique and parents
exist before their children.

Nodes of the same shape (the "Value" of ten thousand meters) share their
constant attributes and one-way references (``_Template``); an attribute is
replaced, never changed in place, so sharing is safe. That and pausing the
garbage collector during a bulk build make a node cost about 15 µs and 2 KB.
Values are written as ``Published`` DataValues, which asyncua need not copy.

This leans on asyncua's internal ``NodeData``/``AttributeValue`` classes,
which is why asyncua is pinned to one version.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import logging
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from asyncua import ua
from asyncua.server.address_space import AddressSpace, AttributeValue, NodeData

from balans_edge.core.times import utc
from balans_edge.plugins.opcua.model import METHOD, OBJECT, OBJECT_TYPE, VARIABLE, Model, NodeSpec
from balans_edge.plugins.opcua.values import GOOD, NO_DATA, UNCERTAIN, WAITING, Column

log = logging.getLogger(__name__)

A = ua.AttributeIds
V = ua.VariantType
YIELD_EVERY = 500
"""Nodes created or deleted between two yields to the event loop."""
BULK = 10_000
"""Creating at least this many nodes pauses the cyclic garbage collector."""
NO_VALUE = ua.StatusCode(ua.StatusCodes.BadWaitingForInitialData)

MethodFactory = Callable[[NodeSpec], Callable[..., Any]]
_REF_FIELDS = ("ReferenceTypeId", "IsForward", "NodeId", "BrowseName", "DisplayName", "NodeClass", "TypeDefinition")


class Published(ua.DataValue):
    """A DataValue this server writes and never changes afterwards.

    asyncua deep-copies the value of every data change for every monitored
    item, to keep the previous value for the next comparison safe from later
    changes of the object; 40 µs each, most of the cost of a data change. A
    value that nobody changes is its own copy. It is serialized like any
    DataValue (same fields)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> Published:
        return self


def _dv(value: Any, variant: ua.VariantType) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value, variant))


_ZERO_MASK = _dv(0, V.UInt32)
_READ_ONLY = _dv(ua.AccessLevel.CurrentRead.mask, V.Byte)
_NOT_HISTORIZING = _dv(False, V.Boolean)
_NO_NOTIFIER = _dv(0, V.Byte)
_NOT_ABSTRACT = _dv(False, V.Boolean)
_EXECUTABLE = _dv(True, V.Boolean)
_SAMPLING = _dv(0.0, V.Double)
_WAITING = Published(StatusCode=NO_VALUE)
"""Shared, never mutated: asyncua replaces a DataValue on write, it does not change one."""


@contextlib.contextmanager
def _bulk(count: int) -> Iterator[None]:
    """No cyclic garbage collection while many nodes are made: none of them is
    garbage, and collections over the growing heap took half the time. One
    full collection at the end moves them all to the oldest generation at
    once, instead of a long pause at some later moment (the next refresh)."""
    if count < BULK or not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def _node_id_attribute() -> AttributeValue:
    """One NodeId attribute for every node of ours, computed when read (from the
    node id asyncua passes): saves an attribute and a DataValue per node."""
    attr = AttributeValue(None)  # type: ignore[arg-type]
    attr.value_callback = lambda nid, _attr: ua.DataValue(ua.Variant(nid, V.NodeId))
    return attr


@dataclass
class _Template:
    """What nodes of one shape share: their constant attributes and one-way references."""

    attributes: dict[ua.AttributeIds, AttributeValue]
    references: list[ua.ReferenceDescription]
    node_class: ua.NodeClass
    browse_name: ua.QualifiedName
    display_name: ua.LocalizedText
    type_definition: ua.NodeId

    @classmethod
    def of(cls, spec: NodeSpec, space: Space) -> _Template:
        name = ua.QualifiedName(spec.name, 0 if spec.standard_name else space.ns)
        display = ua.LocalizedText(spec.display or spec.name)
        av = AttributeValue
        attrs = {A.NodeId: space.node_id_attribute, A.NodeClass: av(_dv(spec.node_class, V.Int32)),
                 A.BrowseName: av(_dv(name, V.QualifiedName)), A.DisplayName: av(_dv(display, V.LocalizedText)),
                 A.Description: av(_dv(ua.LocalizedText(spec.description), V.LocalizedText)),
                 A.WriteMask: av(_ZERO_MASK), A.UserWriteMask: av(_ZERO_MASK)}
        if spec.node_class == OBJECT:
            attrs[A.EventNotifier] = av(_NO_NOTIFIER)
        elif spec.node_class == OBJECT_TYPE:
            attrs[A.IsAbstract] = av(_NOT_ABSTRACT)
        elif spec.node_class == VARIABLE:
            attrs[A.DataType] = av(_dv(ua.NodeId(spec.data_type), V.NodeId))
            attrs[A.ValueRank] = av(_dv(spec.value_rank, V.Int32))
            attrs[A.ArrayDimensions] = av(ua.DataValue(
                ua.Variant([0] if spec.value_rank == 1 else None, V.UInt32, is_array=True)))
            attrs[A.AccessLevel] = av(_READ_ONLY)
            attrs[A.UserAccessLevel] = av(_READ_ONLY)
            attrs[A.MinimumSamplingInterval] = av(_SAMPLING)
            attrs[A.Historizing] = av(_NOT_HISTORIZING)
        elif spec.node_class == METHOD:
            attrs[A.Executable] = av(_EXECUTABLE)
            attrs[A.UserExecutable] = av(_EXECUTABLE)
        type_node = space.node_id(spec.type_def) if spec.type_def else ua.NodeId()
        refs = []
        if spec.type_def:
            refs.append(ua.ReferenceDescription(
                ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasTypeDefinition), IsForward=True, NodeId=type_node,
                NodeClass=ua.NodeClass.ObjectType if spec.node_class == OBJECT else ua.NodeClass.VariableType))
        if spec.modelling_rule:
            mandatory = spec.modelling_rule == ua.ObjectIds.ModellingRule_Mandatory
            refs.append(ua.ReferenceDescription(
                ReferenceTypeId=ua.NodeId(ua.ObjectIds.HasModellingRule), IsForward=True,
                NodeId=ua.NodeId(spec.modelling_rule), NodeClass=ua.NodeClass.Object,
                BrowseName=ua.QualifiedName("Mandatory" if mandatory else "Optional", 0)))
        return cls(attrs, refs, ua.NodeClass(spec.node_class), name, display, type_node)


def static_value(spec: NodeSpec) -> ua.DataValue:
    now = datetime.now(UTC)
    if spec.value is None:
        return Published(ua.Variant(None, V.Null), SourceTimestamp=now, ServerTimestamp=now)
    if isinstance(spec.value, float) and not np.isfinite(spec.value):
        return Published(ua.Variant(None, V.Null), StatusCode=ua.StatusCode(ua.StatusCodes.BadOutOfRange),
                         SourceTimestamp=now, ServerTimestamp=now)
    variant = ua.Variant(spec.value, ua.VariantType(spec.variant), is_array=spec.value_rank == 1)
    return Published(variant, SourceTimestamp=now, ServerTimestamp=now)


@dataclass
class SyncStats:
    created: int = 0
    deleted: int = 0
    updated: int = 0
    moved: int = 0
    owners_changed: list[str] = field(default_factory=list)


class Space:
    """Our nodes in one asyncua address space."""

    def __init__(self, aspace: AddressSpace, ns: int, methods: MethodFactory | None = None) -> None:
        self.aspace = aspace
        self.ns = ns
        self.methods = methods
        self.owners: dict[str, tuple[NodeSpec, ...]] = {}
        self._types: dict[str, NodeSpec] = {}
        self._templates: dict[tuple[Any, ...], _Template] = {}
        self._inverse: dict[tuple[ua.NodeId, int], ua.ReferenceDescription] = {}
        self.node_id_attribute = _node_id_attribute()

    def node_id(self, ident: str | int) -> ua.NodeId:
        if isinstance(ident, int):
            return ua.NodeId(ident, 0)
        return ua.NodeId(ident, self.ns)

    # creating ----------------------------------------------------------------------------

    def add_types(self, specs: Iterable[NodeSpec]) -> None:
        """Our object types and their instance declarations (once, at start)."""
        self._templates, self._inverse = {}, {}
        for spec in specs:
            self._create(spec)
            if spec.node_class == OBJECT_TYPE:
                self._types[spec.id] = spec

    def _template(self, spec: NodeSpec) -> _Template:
        """The attributes and references every node of this shape has alike,
        made once: ten thousand meters' "Value" nodes share them."""
        key = spec.shape()
        template = self._templates.get(key)
        if template is None:
            template = self._templates[key] = _Template.of(spec, self)
        return template

    def _create(self, spec: NodeSpec) -> None:
        template = self._template(spec)
        nid = self.node_id(spec.id)
        node = NodeData(nid)
        if spec.node_class == VARIABLE:
            node.attributes = dict(template.attributes)
            node.attributes[A.Value] = AttributeValue(_WAITING if spec.live else static_value(spec))
        else:
            node.attributes = template.attributes  # copied before a change (see _set_attribute)
            if spec.node_class == METHOD and self.methods is not None and spec.method and not spec.modelling_rule:
                node.call = self.methods(spec)
        node.references = list(template.references)
        self.aspace[nid] = node
        self._attach(self.node_id(spec.parent), spec.reference, node, template)
        for organizer in spec.organized_by:
            self._attach(self.node_id(organizer), ua.ObjectIds.Organizes, node, template)

    def _attach(self, source_id: ua.NodeId, reference: int, target: NodeData, template: _Template) -> None:
        """The references source -> target and back, described without reading either node
        (the source's description is made once per source and reference type)."""
        source = self.aspace.get(source_id)
        if source is None:
            return
        source.references.append(ua.ReferenceDescription(
            ReferenceTypeId=ua.NodeId(reference), IsForward=True, NodeId=target.nodeid,
            NodeClass=template.node_class, BrowseName=template.browse_name, DisplayName=template.display_name,
            TypeDefinition=template.type_definition))
        key = (source_id, reference)
        inverse = self._inverse.get(key)
        if inverse is None:
            inverse = self._inverse[key] = self._describe(source)
            inverse.ReferenceTypeId, inverse.IsForward = ua.NodeId(reference), False
        target.references.append(inverse)

    def _describe(self, node: NodeData) -> ua.ReferenceDescription:
        """A reference description of ``node`` (its class, names and type), to point at it."""
        attrs = node.attributes
        type_def = next((r.NodeId for r in node.references
                         if r.IsForward and r.ReferenceTypeId.Identifier == ua.ObjectIds.HasTypeDefinition
                         and r.ReferenceTypeId.NamespaceIndex == 0), ua.NodeId())
        read = self.aspace.read_attribute_value
        return ua.ReferenceDescription(
            NodeId=node.nodeid, NodeClass=ua.NodeClass(read(node.nodeid, A.NodeClass).Value.Value),
            BrowseName=attrs[A.BrowseName].value.Value.Value, DisplayName=attrs[A.DisplayName].value.Value.Value,
            TypeDefinition=type_def)

    def _link(self, source_id: ua.NodeId, reference: int, target: NodeData) -> None:
        """A reference source -> target and its inverse (skipped when the source is gone)."""
        source = self.aspace.get(source_id)
        if source is None:
            return
        ref_type = ua.NodeId(reference)
        forward = self._describe(target)
        forward.ReferenceTypeId, forward.IsForward = ref_type, True
        source.references.append(forward)
        inverse = self._describe(source)
        inverse.ReferenceTypeId, inverse.IsForward = ref_type, False
        target.references.append(inverse)

    def _set_attribute(self, nid: ua.NodeId, attr: ua.AttributeIds, value: ua.DataValue) -> None:
        """Replace one attribute of one node (its attribute table may be shared:
        it is copied first), and the names other nodes keep in their references."""
        node = self.aspace.get(nid)
        if node is None:
            return
        node.attributes = dict(node.attributes)
        node.attributes[attr] = AttributeValue(value)
        field_name = "BrowseName" if attr == A.BrowseName else "DisplayName" if attr == A.DisplayName else None
        if field_name is None:
            return
        for ref in node.references:
            neighbour = self.aspace.get(ref.NodeId)
            if neighbour is None or neighbour is node:
                continue
            for i, back in enumerate(neighbour.references):
                if back.NodeId == nid:
                    # A new description: the old one may be shared by this node's other neighbours.
                    copy = ua.ReferenceDescription(**{f: getattr(back, f) for f in _REF_FIELDS})
                    setattr(copy, field_name, value.Value.Value)
                    neighbour.references[i] = copy

    def _unlink(self, source_id: ua.NodeId, reference: int, target_id: ua.NodeId) -> None:
        ref_type = ua.NodeId(reference)
        for a, b in ((source_id, target_id), (target_id, source_id)):
            node = self.aspace.get(a)
            if node is not None:
                node.references = [r for r in node.references if not (r.NodeId == b and r.ReferenceTypeId == ref_type)]

    # deleting ----------------------------------------------------------------------------

    async def _delete(self, idents: Iterable[str]) -> int:
        """Delete nodes and every reference to them; their subscribers learn Bad_NodeIdUnknown."""
        gone = {self.node_id(i) for i in idents}
        gone = {nid for nid in gone if nid in self.aspace}
        neighbours: set[ua.NodeId] = set()
        for nid in gone:
            node = self.aspace[nid]
            neighbours.update(r.NodeId for r in node.references if r.NodeId not in gone)
        for nid in neighbours:
            node = self.aspace.get(nid)
            if node is not None:
                node.references = [r for r in node.references if r.NodeId not in gone]
        for i, nid in enumerate(gone):
            await self._drop_callbacks(self.aspace[nid])
            del self.aspace[nid]
            if i % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        return len(gone)

    async def _drop_callbacks(self, node: NodeData) -> None:
        value = node.attributes.get(A.Value)
        if value is None:
            return
        for handle, callback in list(value.datachange_callbacks.items()):
            try:
                result = callback(handle, None, ua.StatusCode(ua.StatusCodes.BadNodeIdUnknown))
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("opcua: telling a subscriber that a node is gone failed")
            self.aspace.delete_datachange_callback(handle)

    # applying a model --------------------------------------------------------------------

    async def apply(self, model: Model) -> SyncStats:
        """Make the address space match ``model``: delete what is gone, create
        what is new, move, rename and rewrite what changed. An unchanged
        registry object costs one identity comparison."""
        stats = SyncStats()
        self._templates, self._inverse = {}, {}  # per call: nothing outlives the nodes it was made for
        old, new = self.owners, model.owners
        removed: set[str] = set()
        created: list[NodeSpec] = []
        changed: list[tuple[NodeSpec, NodeSpec]] = []
        for owner, specs in old.items():
            if owner not in new:
                removed.update(s.id for s in specs)
        for owner, specs in new.items():
            before = old.get(owner)
            if before is specs:
                continue
            if before is None:
                created.extend(specs)
                continue
            if before == specs:
                continue
            stats.owners_changed.append(owner)
            self._diff(before, specs, removed, created, changed)
        stats.deleted = await self._delete(removed)
        with _bulk(len(created)):
            for i, spec in enumerate(created):
                self._create(spec)
                if i % YIELD_EVERY == YIELD_EVERY - 1:
                    await asyncio.sleep(0)
        stats.created = len(created)
        for before, after in changed:
            await self._update(before, after, stats)
        self.owners = dict(new)
        return stats

    @staticmethod
    def _diff(before: tuple[NodeSpec, ...], after: tuple[NodeSpec, ...], removed: set[str],
              created: list[NodeSpec], changed: list[tuple[NodeSpec, NodeSpec]]) -> None:
        old = {s.id: s for s in before}
        new_ids = {s.id for s in after}
        removed.update(old.keys() - new_ids)
        remade: list[str] = []
        for spec in after:
            prev = old.get(spec.id)
            if prev is None or prev.structure() != spec.structure() or any(
                    spec.id.startswith(r + "/") for r in remade):
                if prev is not None:
                    removed.add(spec.id)
                    remade.append(spec.id)
                created.append(spec)
            elif prev != spec:
                changed.append((prev, spec))

    async def _update(self, before: NodeSpec, after: NodeSpec, stats: SyncStats) -> None:
        nid = self.node_id(after.id)
        node = self.aspace.get(nid)
        if node is None:
            return
        if (before.parent, before.reference) != (after.parent, after.reference):
            self._unlink(self.node_id(before.parent), before.reference, nid)
            self._link(self.node_id(after.parent), after.reference, node)
            stats.moved += 1
        if before.organized_by != after.organized_by:
            for organizer in set(before.organized_by) - set(after.organized_by):
                self._unlink(self.node_id(organizer), ua.ObjectIds.Organizes, nid)
            for organizer in set(after.organized_by) - set(before.organized_by):
                self._link(self.node_id(organizer), ua.ObjectIds.Organizes, node)
        if (before.display or before.name) != (after.display or after.name):
            self._set_attribute(nid, A.DisplayName, _dv(ua.LocalizedText(after.display or after.name),
                                                        V.LocalizedText))
        if before.description != after.description:
            self._set_attribute(nid, A.Description, _dv(ua.LocalizedText(after.description), V.LocalizedText))
        if not after.live and after.node_class == VARIABLE and before.value != after.value:
            await self.write(nid, static_value(after))
            stats.updated += 1

    async def write(self, nid: ua.NodeId, value: ua.DataValue) -> None:
        """Set a variable's value and tell its subscribers, as asyncua's own
        write does, without its type check (a property may become null)."""
        node = self.aspace.get(nid)
        if node is None:
            return
        attr = node.attributes[A.Value]
        attr.value = value
        attr.value_callback = None
        for handle, callback in list(attr.datachange_callbacks.items()):
            try:
                await callback(handle, value)
            except Exception:
                log.exception("opcua: a data change callback failed")

    def node_count(self) -> int:
        return sum(len(s) for s in self.owners.values())


# publishing live values ----------------------------------------------------------------------

STATUS = {GOOD: ua.StatusCode(ua.StatusCodes.Good),
          UNCERTAIN: ua.StatusCode(ua.StatusCodes.UncertainSubstituteValue),
          NO_DATA: ua.StatusCode(ua.StatusCodes.BadNoData),
          WAITING: NO_VALUE}


OUT_OF_RANGE = ua.StatusCode(ua.StatusCodes.BadOutOfRange)
RANGES = {"uint16": (0, 0xFFFF), "uint32": (0, 0xFFFFFFFF), "datetime": (-11_644_473_600, 253_402_300_799),
          "double": (-np.inf, np.inf), "bool": (-np.inf, np.inf)}
"""What a variable of each kind can hold (DateTime: 1601-01-01 .. 9999-12-31, OPC 10000-6 5.2.2.5)."""


def fits(kind: str, value: float) -> bool:
    """A finite number its variable's DataType can hold (an integer after truncation)."""
    low, high = RANGES[kind]
    return math.isfinite(value) and low <= (int(value) if kind.startswith("uint") else value) <= high


def _variant(kind: str, value: float) -> ua.Variant:
    if kind == "double":
        return ua.Variant(float(value), V.Double)
    if kind == "uint16":
        return ua.Variant(int(value), V.UInt16)
    if kind == "uint32":
        return ua.Variant(int(value), V.UInt32)
    if kind == "datetime":
        return ua.Variant(utc(value), V.DateTime)
    return ua.Variant(bool(value == 1.0), V.Boolean)


def data_value(kind: str, value: float, status: int, source: float, now: datetime) -> ua.DataValue:
    """A live variable's DataValue. A Bad value carries no value (OPC 10000-4 7.7.1):
    Bad_NoData and Bad_WaitingForInitialData as ``status`` says, Bad_OutOfRange
    for a number the variable cannot hold (infinite, not a number, beyond an
    integer's range): a client never reads infinity or a clipped value."""
    when = utc(source) if fits("datetime", source) else now
    if status >= NO_DATA:
        return Published(ua.Variant(None, V.Null), StatusCode=STATUS[status], SourceTimestamp=when,
                         ServerTimestamp=now)
    if not fits(kind, value):
        return Published(ua.Variant(None, V.Null), StatusCode=OUT_OF_RANGE, SourceTimestamp=when,
                         ServerTimestamp=now)
    return Published(_variant(kind, value), StatusCode=STATUS[status], SourceTimestamp=when, ServerTimestamp=now)


class Publisher:
    """Writes the live variables whose value or status changed since the last
    publication, so a subscriber hears of a change once and never of a value
    that did not change. Survives a new ``Values`` (registry change) by
    matching rows by object id."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self.last: dict[str, tuple[list[str], np.ndarray, np.ndarray]] = {}
        self.written = 0

    def _previous(self, col: Column) -> tuple[np.ndarray, np.ndarray]:
        n = len(col.ids)
        prev = self.last.get(col.path)
        if prev is None:
            return np.full(n, np.nan), np.full(n, WAITING, dtype=np.int8)
        ids, value, status = prev
        if ids is col.ids or ids == col.ids:
            return value, status
        row = {object_id: i for i, object_id in enumerate(ids)}
        at = np.array([row.get(object_id, -1) for object_id in col.ids], dtype=np.int64)
        known = at >= 0
        # Only the known rows are looked up: the previous columns may be empty (a registry that had no meters).
        old_value, old_status = np.full(n, np.nan), np.full(n, WAITING, dtype=np.int8)
        old_value[known], old_status[known] = value[at[known]], status[at[known]]
        return old_value, old_status

    async def publish(self, columns: Iterable[Column]) -> int:
        now = datetime.now(UTC)
        count = 0
        for col in columns:
            # Copies: the Values object goes on changing its arrays in place.
            value = np.array(col.value, dtype=np.float64)
            status = np.array(col.status, dtype=np.int8)
            if col.present is not None:
                # Rows without the variable stay "never written": if the node appears later, it starts from there.
                value = np.where(col.present, value, np.nan)
                status = np.where(col.present, status, WAITING).astype(np.int8)
            old_value, old_status = self._previous(col)
            same = (value == old_value) | (np.isnan(value) & np.isnan(old_value))
            rows = np.flatnonzero((status != old_status) | ~same)
            source = np.asarray(col.source, dtype=np.float64)
            for i in rows.tolist():
                nid = ua.NodeId(f"{col.ids[i]}/{col.path}", self.space.ns)
                await self.space.write(nid, data_value(col.variant, value[i], int(status[i]), source[i], now))
                count += 1
                if count % YIELD_EVERY == 0:
                    await asyncio.sleep(0)
            self.last[col.path] = (col.ids, value, status)
        self.written += count
        return count
