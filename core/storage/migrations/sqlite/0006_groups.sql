-- Balance groups, their hourly balance, and the durable list of hours to recompute.
CREATE TABLE groups (
    group_id TEXT PRIMARY KEY,
    resource TEXT NOT NULL,
    unit TEXT NOT NULL,
    inputs TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    level TEXT NOT NULL DEFAULT 'house',
    parent_id TEXT,
    loss_norm_pct REAL,
    price REAL,
    allocation_rule TEXT NOT NULL DEFAULT 'consumption',
    odn_norm REAL
);

-- Per group and hour: sums of the values that exist and counts of meters by
-- quality (members, and the group's own inputs). Flags, loss % and the norm
-- are derived when read, so changing a norm needs no recomputation.
CREATE TABLE balance_hourly (
    group_id TEXT NOT NULL,
    t INTEGER NOT NULL,
    input REAL NOT NULL,
    consumed REAL NOT NULL,
    measured INTEGER NOT NULL,
    estimated INTEGER NOT NULL,
    missing INTEGER NOT NULL,
    input_measured INTEGER NOT NULL,
    input_estimated INTEGER NOT NULL,
    input_missing INTEGER NOT NULL,
    PRIMARY KEY (group_id, t)
) WITHOUT ROWID;

CREATE TABLE balance_dirty (
    id INTEGER PRIMARY KEY,
    lo INTEGER NOT NULL,
    hi INTEGER NOT NULL
);

-- A change of the group tree or of a meter's membership or active period changes
-- every stored hour's balance: mark them all, in the same transaction as the change.
CREATE TRIGGER groups_inserted AFTER INSERT ON groups
BEGIN
    INSERT INTO balance_dirty (lo, hi) SELECT min(t), max(t) + 3600 FROM consumption_hourly HAVING count(*) > 0;
END;
CREATE TRIGGER groups_updated AFTER UPDATE ON groups
WHEN old.inputs IS NOT new.inputs OR old.parent_id IS NOT new.parent_id
BEGIN
    INSERT INTO balance_dirty (lo, hi) SELECT min(t), max(t) + 3600 FROM consumption_hourly HAVING count(*) > 0;
END;
CREATE TRIGGER groups_deleted AFTER DELETE ON groups
BEGIN
    DELETE FROM balance_hourly WHERE group_id = old.group_id;
    INSERT INTO balance_dirty (lo, hi) SELECT min(t), max(t) + 3600 FROM consumption_hourly HAVING count(*) > 0;
END;
CREATE TRIGGER meters_membership_changed AFTER UPDATE OF group_id, install_time, removed_time ON meters
WHEN old.group_id IS NOT new.group_id OR old.install_time != new.install_time
     OR old.removed_time IS NOT new.removed_time
BEGIN
    INSERT INTO balance_dirty (lo, hi) SELECT min(t), max(t) + 3600 FROM consumption_hourly HAVING count(*) > 0;
END;
