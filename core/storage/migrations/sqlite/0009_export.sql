-- Export to time-series databases (plugins/export): the targets with their
-- counters, and the batches a target refused for good (dead letters).
--
-- Each target also has a queue table, export_queue_<id> (id, kind, k1, k2, t),
-- and the source tables (readings, consumption_hourly, balance_hourly, findings,
-- alarms, topology_snapshots) have triggers that append to the queues of the
-- targets exporting them. Queues and triggers are generated from the
-- configuration (Storage.export_configure), not here: which tables feed which
-- target, and each queue's bound, are configuration, and compiling them into
-- the triggers keeps the cost per point to one insert per target, in the same
-- transaction as the data it comes from.
CREATE TABLE export_targets (
    id INTEGER PRIMARY KEY,                   -- names the queue table export_queue_<id>
    name TEXT NOT NULL UNIQUE,
    kinds TEXT NOT NULL DEFAULT '',           -- comma-separated kinds its triggers enqueue ('': none)
    max_queue INTEGER NOT NULL CHECK (max_queue > 0),
    when_full TEXT NOT NULL CHECK (when_full IN ('drop_oldest', 'block')),
    sent INTEGER NOT NULL DEFAULT 0,          -- points the target accepted
    dropped INTEGER NOT NULL DEFAULT 0,       -- points dropped from a full queue (drop_oldest)
    dead INTEGER NOT NULL DEFAULT 0,          -- points moved to export_dead
    retries INTEGER NOT NULL DEFAULT 0,       -- requests repeated after a transient failure
    last_error TEXT NOT NULL DEFAULT '',
    last_error_at INTEGER,
    last_sent_at INTEGER
);

CREATE TABLE export_dead (
    id INTEGER PRIMARY KEY,
    target INTEGER NOT NULL REFERENCES export_targets (id) ON DELETE CASCADE,
    t INTEGER NOT NULL,                       -- when the target refused it
    status INTEGER NOT NULL,                  -- the HTTP status of the refusal
    message TEXT NOT NULL,                    -- what the target said
    points INTEGER NOT NULL,
    lines TEXT NOT NULL                       -- the refused line protocol, as sent
);
CREATE INDEX export_dead_target ON export_dead (target, id);
