-- What DMesh concentrators report besides counters: module events, route
-- snapshots, command and firmware outcomes, and a log of their connections.

-- Idempotent on (module_id, ts, code): a retransmitted EVENT frame is stored once.
CREATE TABLE module_events (
    module_id INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    code INTEGER NOT NULL,
    concentrator_id INTEGER NOT NULL,
    value INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (module_id, ts, code)
) WITHOUT ROWID;
CREATE INDEX module_events_received ON module_events (received_at);

-- Every TOPOLOGY report is kept: the route history of each module.
CREATE TABLE topology_snapshots (
    module_id INTEGER NOT NULL,
    t INTEGER NOT NULL,
    concentrator_id INTEGER NOT NULL,
    parent_id INTEGER NOT NULL,
    hops INTEGER NOT NULL,
    rssi INTEGER NOT NULL,
    battery_mv INTEGER NOT NULL,
    fw_version INTEGER NOT NULL,
    channels INTEGER NOT NULL,
    state INTEGER NOT NULL,
    PRIMARY KEY (module_id, t, concentrator_id)
) WITHOUT ROWID;
CREATE INDEX topology_snapshots_concentrator ON topology_snapshots (concentrator_id, t);

CREATE TABLE command_results (
    concentrator_id INTEGER NOT NULL,
    command_id INTEGER NOT NULL,
    result INTEGER NOT NULL,
    status INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (concentrator_id, command_id)
) WITHOUT ROWID;

CREATE TABLE firmware_results (
    concentrator_id INTEGER NOT NULL,
    image_id INTEGER NOT NULL,
    result INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (concentrator_id, image_id)
) WITHOUT ROWID;

CREATE TABLE connection_log (
    id INTEGER PRIMARY KEY,
    concentrator_id INTEGER,
    event TEXT NOT NULL CHECK (event IN ('connect', 'auth_failed', 'disconnect', 'replaced')),
    t INTEGER NOT NULL,
    peer TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX connection_log_concentrator ON connection_log (concentrator_id, t);
