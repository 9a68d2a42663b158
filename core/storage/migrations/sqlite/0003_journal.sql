-- Journals of commands (the actuation audit), findings and alarms.
CREATE TABLE commands (
    id INTEGER PRIMARY KEY,
    t INTEGER NOT NULL,
    target TEXT NOT NULL,
    code TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);

CREATE TABLE findings (
    id INTEGER PRIMARY KEY,
    t INTEGER NOT NULL,
    detector TEXT NOT NULL,
    subject TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX findings_subject ON findings (subject, t);

CREATE TABLE alarms (
    id INTEGER PRIMARY KEY,
    t INTEGER NOT NULL,
    source TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
