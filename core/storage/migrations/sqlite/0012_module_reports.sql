-- What registered radio modules report about themselves with their readings
-- (DMesh READINGS: battery, RSSI of the link to the parent, hops), one row per
-- module and hour (the first report in it): the history the network detectors
-- use between TOPOLOGY reports. hops is NULL when the module sent a value out
-- of 1..30.
CREATE TABLE module_reports (
    module_id INTEGER NOT NULL,
    t INTEGER NOT NULL,
    battery_mv INTEGER NOT NULL,
    rssi INTEGER NOT NULL,
    hops INTEGER,
    PRIMARY KEY (module_id, t)
) WITHOUT ROWID;
