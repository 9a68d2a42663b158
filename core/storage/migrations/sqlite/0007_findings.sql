-- Findings get a lifecycle (open -> acknowledged -> resolved | false_alarm),
-- are deduplicated across detector runs, and keep the operators' feedback.
ALTER TABLE findings ADD COLUMN status TEXT NOT NULL DEFAULT 'open';
ALTER TABLE findings ADD COLUMN group_id TEXT;
ALTER TABLE findings ADD COLUMN first_seen INTEGER;
ALTER TABLE findings ADD COLUMN last_seen INTEGER;
ALTER TABLE findings ADD COLUMN seen INTEGER NOT NULL DEFAULT 1;
ALTER TABLE findings ADD COLUMN feedback TEXT NOT NULL DEFAULT '[]';

-- Findings stored before this version were seen once, when they were stored.
UPDATE findings SET first_seen = t, last_seen = t,
    group_id = CASE WHEN json_valid(data) THEN json_extract(data, '$.group_id') END;

CREATE INDEX findings_identity ON findings (detector, subject, kind, status);
CREATE INDEX findings_last_seen ON findings (last_seen);
