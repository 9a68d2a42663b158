-- Protocol bridges (the Modbus server, later others) give each registry object a
-- slot in their address space. Slots are allocated once and kept, so that a
-- SCADA's tag list stays valid when meters or groups are added or removed.
CREATE TABLE bridge_slots (
    bridge TEXT NOT NULL,        -- e.g. 'modbus:meters', 'modbus:groups'
    object_id TEXT NOT NULL,     -- meter_id, group_id, ...
    slot INTEGER NOT NULL CHECK (slot >= 0),
    allocated_at INTEGER NOT NULL,
    PRIMARY KEY (bridge, object_id),
    UNIQUE (bridge, slot)
);

-- Values of tags polled from PLCs and OPC UA servers (tank level, pump state,
-- pressure, totaliser): one row per tag and sample, with its quality.
CREATE TABLE tag_values (
    tag TEXT NOT NULL,           -- '<device>/<tag>' as configured
    ts INTEGER NOT NULL,         -- unix time of the sample (UTC seconds)
    value REAL,                  -- NULL when the quality is not 'good'
    quality TEXT NOT NULL CHECK (quality IN ('good', 'stale', 'comm_fail')),
    PRIMARY KEY (tag, ts)
) WITHOUT ROWID;
