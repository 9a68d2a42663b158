-- Hourly consumption per meter and the durable list of ranges to recompute.
CREATE TABLE interval_dirty (
    id INTEGER PRIMARY KEY,
    meter INTEGER NOT NULL,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL
);

CREATE TABLE consumption_hourly (
    meter INTEGER NOT NULL,
    t INTEGER NOT NULL,
    value REAL,
    quality INTEGER NOT NULL,
    PRIMARY KEY (meter, t)
) WITHOUT ROWID;

-- Bumped on every registry change so that long-running services reload their caches.
CREATE TABLE registry_state (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO registry_state (id, version) VALUES (1, 0);
