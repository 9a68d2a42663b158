-- A finding is one event: when it started and ended in the data's time (not the
-- wall clock: history is replayed and back-filled), its rate and its volume.
ALTER TABLE findings ADD COLUMN started INTEGER;
ALTER TABLE findings ADD COLUMN ended INTEGER;
ALTER TABLE findings ADD COLUMN rate REAL;
ALTER TABLE findings ADD COLUMN volume REAL;

-- Findings stored before: the event as their reports described it.
UPDATE findings SET started = coalesce(first_seen, t), ended = coalesce(last_seen, t);
UPDATE findings SET started = min(started, json_extract(data, '$.start'))
    WHERE json_valid(data) AND json_type(data, '$.start') IN ('integer', 'real');
UPDATE findings SET volume = json_extract(data, '$.volume_m3')
    WHERE json_valid(data) AND json_type(data, '$.volume_m3') IN ('integer', 'real');
UPDATE findings SET rate = json_extract(data, '$.rate')
    WHERE json_valid(data) AND json_type(data, '$.rate') IN ('integer', 'real');

CREATE INDEX findings_event ON findings (detector, subject, kind, id);
