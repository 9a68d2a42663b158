-- Hourly values are in the meter's unit: when its pulse weight changes, its whole
-- stored history must be recomputed. A trigger does it in the same transaction as
-- the change, whichever path (API, import) made it.
CREATE TRIGGER meters_weight_changed AFTER UPDATE OF pulse_weight ON meters
WHEN old.pulse_weight != new.pulse_weight
BEGIN
    INSERT INTO interval_dirty (meter, lo, hi)
    SELECT new.id, min(ts), max(ts) FROM readings WHERE meter = new.id HAVING count(*) > 0;
END;
