-- A later change of the plugin's table comes as the next migration (never an
-- edit of a released one): the route reads the newest batches first.
CREATE INDEX example_batches_t ON example_batches (t);
