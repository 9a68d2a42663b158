-- Registry, readings and the quarantine of readings from unknown modules.
CREATE TABLE concentrators (
    concentrator_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL DEFAULT '',
    site TEXT NOT NULL DEFAULT '',
    description TEXT NOT NULL DEFAULT ''
);

CREATE TABLE modules (
    module_id INTEGER PRIMARY KEY,
    concentrator_id INTEGER REFERENCES concentrators (concentrator_id) DEFERRABLE INITIALLY DEFERRED,
    channels INTEGER NOT NULL DEFAULT 1,
    parent_id INTEGER,
    hops INTEGER,
    rssi INTEGER,
    battery_mv INTEGER,
    firmware TEXT NOT NULL DEFAULT '',
    last_seen INTEGER
);

CREATE TABLE accounts (
    account_id TEXT PRIMARY KEY,
    consumer TEXT NOT NULL DEFAULT '',
    contact TEXT NOT NULL DEFAULT '',
    tariff_plan TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '',
    area_m2 REAL
);

CREATE TABLE meters (
    id INTEGER PRIMARY KEY,
    meter_id TEXT NOT NULL UNIQUE,
    resource TEXT NOT NULL,
    unit TEXT NOT NULL,
    pulse_weight REAL NOT NULL,
    install_time INTEGER NOT NULL,
    module_id INTEGER REFERENCES modules (module_id) DEFERRABLE INITIALLY DEFERRED,
    channel INTEGER,
    base_reading REAL NOT NULL DEFAULT 0,
    base_counter INTEGER NOT NULL DEFAULT 0,
    account_id TEXT REFERENCES accounts (account_id) DEFERRABLE INITIALLY DEFERRED,
    group_id TEXT,
    accuracy_class TEXT NOT NULL DEFAULT '',
    flags TEXT NOT NULL DEFAULT '',
    removed_time INTEGER
);
CREATE INDEX meters_module ON meters (module_id, channel);

-- One row per meter and timestamp: retransmissions are idempotent.
CREATE TABLE readings (
    meter INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    pulses INTEGER NOT NULL,
    status INTEGER NOT NULL,
    flags INTEGER NOT NULL,
    PRIMARY KEY (meter, ts)
) WITHOUT ROWID;

CREATE TABLE quarantine (
    module_id INTEGER NOT NULL,
    channel INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    counter INTEGER NOT NULL,
    status INTEGER NOT NULL,
    reason TEXT NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (module_id, channel, ts)
) WITHOUT ROWID;
