-- What the host pushed, kept with the concentrator's FIRMWARE_RESULT: the
-- image's target (1 concentrator, 2 radio modules) and its version as the
-- vendor's signature file states it. An accepted image counts as installed,
-- so an older one is refused unless the operator forces it. NULL: the result
-- arrived while no push of that image was running (after a restart).
ALTER TABLE firmware_results ADD COLUMN target INTEGER;
ALTER TABLE firmware_results ADD COLUMN version TEXT;
