-- Lifecycle: sets can be archived (artifact deleted by retention, row kept as history), can come
-- from outside (imported), and every change of the current set is logged, so that a rollback
-- knows which set was current before.
ALTER TABLE prediction_sets ADD COLUMN origin TEXT NOT NULL DEFAULT 'trained';  -- 'trained' or 'imported'
ALTER TABLE prediction_sets ADD COLUMN archived_at TEXT;  -- set when retention deleted the artifact

CREATE TABLE promotions (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    model_type        TEXT    NOT NULL,
    prediction_set_id INTEGER NOT NULL REFERENCES prediction_sets (id),
    reason            TEXT    NOT NULL,   -- 'train', 'import', 'promote', 'rollback', 'upgrade'
    promoted_at       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX idx_promotions_type ON promotions (model_type, id);

-- The sets current at upgrade time start the log.
INSERT INTO promotions (model_type, prediction_set_id, reason, promoted_at)
SELECT model_type, id, 'upgrade', created_at FROM prediction_sets WHERE is_current ORDER BY id;
