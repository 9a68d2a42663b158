-- Tables have owners. Core's tables are migrated by this sequence, whose version
-- stays in PRAGMA user_version (so databases of every earlier release upgrade as
-- before). A plugin brings its own tables with its own sequence of migrations
-- (balans_edge.core.storage.migrations.MigrationSet, contributed through the
-- register_migrations hook), applied after core's; the versions of those
-- sequences are recorded here, one row per migration applied.
CREATE TABLE owner_migrations (
    owner TEXT NOT NULL,                      -- e.g. 'dmesh', 'export', 'example'
    version INTEGER NOT NULL CHECK (version > 0),
    name TEXT NOT NULL,                       -- the file applied, e.g. '0001_notes.sql'
    applied_at INTEGER NOT NULL,              -- unix time (UTC seconds)
    PRIMARY KEY (owner, version)
);

-- Hand-over. Before owners existed, core migrations created tables that belong
-- to plugins. From this version on they are their owners' and no core migration
-- creates, alters or drops them again:
--
--   dmesh    module_events, topology_snapshots, command_results, connection_log
--            (0005), firmware_results (0005; 0013 added target and version),
--            module_reports (0012)
--   modbus   bridge_slots (0008)
--   tags     tag_values (0008): the tag polling Modbus and OPC UA share
--   export   export_targets (0009), export_dead (0009; 0010 added resend), and
--            the export_queue_<id> tables and export_* triggers it generates
--            from its configuration
--
-- Each owner's first migration creates its tables with CREATE TABLE (and
-- CREATE INDEX) IF NOT EXISTS, in their shape as of core version 15. On SQLite
-- every database passed through 0005..0015, so that migration changes nothing
-- there; on a backend without this history it is the real creation. Later
-- migrations of the owner change its tables like any other. Nothing needs to
-- move here: the tables stay as they are, only who migrates them changes.
