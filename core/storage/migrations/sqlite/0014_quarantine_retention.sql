-- The quarantine is bounded (docs/ingest.md): readings age out, and the oldest
-- received go when it is full. What was dropped is counted here, by reason.
CREATE INDEX quarantine_received ON quarantine (received_at);
CREATE TABLE quarantine_dropped (
    reason TEXT PRIMARY KEY,
    count INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
INSERT INTO quarantine_dropped (reason) VALUES ('age'), ('size');
