-- Validity periods of a meter's parameters and the audit of registry changes.
--
-- A meter's pulse weight, base reading and counter, module and channel and
-- balance group hold from a time on: each change starts a new period, and the
-- readings taken before it keep the parameters they were taken under (so a
-- registry edit never rewrites closed history). ``meters`` keeps the current
-- parameters; ``params_from`` is when they started to hold.
ALTER TABLE meters ADD COLUMN params_from INTEGER;
UPDATE meters SET params_from = install_time;

CREATE TABLE meter_periods (
    meter INTEGER NOT NULL,
    valid_from INTEGER NOT NULL,              -- the period holds from here to the next one's valid_from
    pulse_weight REAL NOT NULL,
    base_reading REAL NOT NULL,               -- differs from the previous period's: the register restarts from it
    base_counter INTEGER NOT NULL,            -- the module's counter at valid_from (with a module change)
    module_id INTEGER,
    channel INTEGER,
    group_id TEXT,
    anchor_pulses INTEGER NOT NULL DEFAULT 0, -- the meter's pulses at its last reading at or before valid_from
    PRIMARY KEY (meter, valid_from)
) WITHOUT ROWID;

-- Every existing meter gets one period: its parameters as they are, since it was installed.
INSERT INTO meter_periods (meter, valid_from, pulse_weight, base_reading, base_counter, module_id, channel, group_id)
SELECT id, install_time, pulse_weight, base_reading, base_counter, module_id, channel, group_id FROM meters;

-- A new meter's first period starts at its installation.
CREATE TRIGGER meters_first_period AFTER INSERT ON meters
BEGIN
    -- DELETE then INSERT, not INSERT OR REPLACE: the outer statement's conflict
    -- handling (an upsert's) would override the trigger's.
    DELETE FROM meter_periods WHERE meter = new.id AND valid_from = new.install_time;
    INSERT INTO meter_periods (meter, valid_from, pulse_weight, base_reading, base_counter, module_id,
                               channel, group_id)
    VALUES (new.id, new.install_time, new.pulse_weight, new.base_reading, new.base_counter, new.module_id,
            new.channel, new.group_id);
END;

-- A change of parameters starts a period at params_from, which may not reach
-- back into stored readings or before the latest period (correcting the past
-- is a separate, audited operation that rewrites meter_periods itself). The
-- hours from then on are re-balanced when the group changed; hourly
-- consumption needs no recomputation: no reading lies in the new period yet.
-- A correction writes the periods itself and updates the row with a NULL
-- params_from, which this trigger leaves alone.
CREATE TRIGGER meters_params_changed AFTER UPDATE ON meters
WHEN (old.pulse_weight IS NOT new.pulse_weight OR old.base_reading IS NOT new.base_reading
     OR old.base_counter IS NOT new.base_counter OR old.module_id IS NOT new.module_id
     OR old.channel IS NOT new.channel OR old.group_id IS NOT new.group_id)
     AND new.params_from IS NOT NULL
BEGIN
    SELECT RAISE(ABORT, 'a parameter change cannot take effect before the meter''s newest reading or latest period: correct the past with a correction')
    WHERE EXISTS (SELECT 1 FROM readings WHERE meter = new.id AND ts >= new.params_from)
       OR new.params_from < (SELECT max(valid_from) FROM meter_periods WHERE meter = new.id);
    DELETE FROM meter_periods WHERE meter = new.id AND valid_from = new.params_from;
    INSERT INTO meter_periods (meter, valid_from, pulse_weight, base_reading, base_counter, module_id,
                               channel, group_id, anchor_pulses)
    VALUES (new.id, new.params_from, new.pulse_weight, new.base_reading, new.base_counter, new.module_id,
            new.channel, new.group_id,
            coalesce((SELECT pulses FROM readings WHERE meter = new.id AND ts <= new.params_from
                      ORDER BY ts DESC LIMIT 1), 0));
    INSERT INTO balance_dirty (lo, hi)
    SELECT new.params_from - new.params_from % 3600, max(t) + 3600 FROM consumption_hourly
    WHERE old.group_id IS NOT new.group_id HAVING max(t) + 3600 > new.params_from - new.params_from % 3600;
END;

-- The first period follows the installation time.
CREATE TRIGGER meters_install_moved AFTER UPDATE OF install_time ON meters
WHEN old.install_time != new.install_time
BEGIN
    UPDATE meter_periods SET valid_from = new.install_time WHERE meter = new.id AND valid_from = old.install_time;
END;

CREATE TRIGGER meters_deleted_periods AFTER DELETE ON meters
BEGIN
    DELETE FROM meter_periods WHERE meter = old.id;
END;

-- Replaced: a new pulse weight no longer marks the whole history for recomputation
-- (0004), and a group change no longer re-balances every stored hour (0006).
DROP TRIGGER meters_weight_changed;
DROP TRIGGER meters_membership_changed;
CREATE TRIGGER meters_membership_changed AFTER UPDATE OF install_time, removed_time ON meters
WHEN old.install_time != new.install_time OR old.removed_time IS NOT new.removed_time
BEGIN
    INSERT INTO balance_dirty (lo, hi) SELECT min(t), max(t) + 3600 FROM consumption_hourly HAVING count(*) > 0;
END;

-- Who changed what in the registry, when, and why: one row per object written,
-- in the transaction that writes it. Append-only.
CREATE TABLE registry_audit (
    id INTEGER PRIMARY KEY,
    t INTEGER NOT NULL,
    who TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('create', 'update', 'delete', 'correct')),
    kind TEXT NOT NULL,
    object_id TEXT NOT NULL,
    before TEXT,                              -- JSON, NULL for a create
    after TEXT,                               -- JSON, NULL for a delete
    effective_from INTEGER,                   -- a meter's new parameters hold from here
    effective_to INTEGER,                     -- a correction's end (NULL: open)
    reason TEXT NOT NULL DEFAULT ''
);
CREATE INDEX registry_audit_object ON registry_audit (kind, object_id, id);
CREATE INDEX registry_audit_t ON registry_audit (t);
CREATE TRIGGER registry_audit_no_update BEFORE UPDATE ON registry_audit
BEGIN
    SELECT RAISE(ABORT, 'the registry audit is append-only');
END;
CREATE TRIGGER registry_audit_no_delete BEFORE DELETE ON registry_audit
BEGIN
    SELECT RAISE(ABORT, 'the registry audit is append-only');
END;
