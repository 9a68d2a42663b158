-- The readings batches the example plugin observed (observe_readings), one row
-- per committed batch: the plugin's own table, created by its own migration.
CREATE TABLE example_batches (
    id INTEGER PRIMARY KEY,
    t INTEGER NOT NULL,          -- when the plugin observed the batch (unix UTC seconds)
    readings INTEGER NOT NULL,   -- readings in the batch
    meters INTEGER NOT NULL,     -- meters they belong to
    t_min INTEGER NOT NULL,      -- time of the batch's oldest reading
    t_max INTEGER NOT NULL       -- and of its newest
);
