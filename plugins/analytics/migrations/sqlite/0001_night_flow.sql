-- The analytics plugin's table: night-flow settings an operator set per group
-- through the API (PUT /api/v1/analytics/night-flow/{group}). The presets and
-- the configuration's values are not stored: they come from the code and the file.
CREATE TABLE IF NOT EXISTS analytics_night_flow (
    group_id TEXT PRIMARY KEY,
    settings TEXT NOT NULL,          -- JSON: the preset and the values that differ from it
    updated_at INTEGER NOT NULL,
    updated_by TEXT NOT NULL DEFAULT ''
);
