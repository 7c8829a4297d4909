-- The Phase-4 schema, as databases in the field were created with it.
-- IF NOT EXISTS makes this a no-op on a Phase-4 database and the starting point of a blank one.
CREATE TABLE IF NOT EXISTS data_history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset     TEXT    NOT NULL,
    features    TEXT    NOT NULL,   -- JSON array of numbers, one observation
    target      TEXT    NOT NULL,   -- JSON scalar: a number or a string label
    recorded_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX IF NOT EXISTS idx_data_history_dataset ON data_history (dataset, id);

CREATE TABLE IF NOT EXISTS prediction_sets (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    model_type  TEXT    NOT NULL,
    dataset     TEXT    NOT NULL,
    created_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    is_current  BOOLEAN NOT NULL DEFAULT 0,
    metrics     TEXT             -- JSON object, e.g. {"accuracy": 0.95}
);
CREATE INDEX IF NOT EXISTS idx_prediction_sets_type ON prediction_sets (model_type, created_at);
