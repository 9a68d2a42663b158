-- A group's input may be calculated: a formula over meters and tags
-- (core/formula.py, core/calculated.py) instead of input meters; '' = none.
ALTER TABLE groups ADD COLUMN formula TEXT NOT NULL DEFAULT '';

-- A changed formula changes every stored hour's balance, as changed input meters do.
DROP TRIGGER groups_updated;
CREATE TRIGGER groups_updated AFTER UPDATE ON groups
WHEN old.inputs IS NOT new.inputs OR old.parent_id IS NOT new.parent_id OR old.formula IS NOT new.formula
BEGIN
    INSERT INTO balance_dirty (lo, hi) SELECT min(t), max(t) + 3600 FROM consumption_hourly HAVING count(*) > 0;
END;
