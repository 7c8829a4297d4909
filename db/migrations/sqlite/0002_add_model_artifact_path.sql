-- Phase 5: every prediction set records the joblib artifact that holds its fitted pipeline,
-- how to verify that file, and what it was trained with. Legacy rows keep NULLs here:
-- a current set without an artifact path means "this model type needs training".
ALTER TABLE prediction_sets ADD COLUMN model_artifact_path TEXT;   -- relative to the models directory
ALTER TABLE prediction_sets ADD COLUMN artifact_sha256 TEXT;       -- hex SHA-256 of the file's bytes
ALTER TABLE prediction_sets ADD COLUMN artifact_size_bytes INTEGER;
ALTER TABLE prediction_sets ADD COLUMN algorithm TEXT;             -- catalog recipe name
ALTER TABLE prediction_sets ADD COLUMN task TEXT;                  -- 'classification' or 'regression'
ALTER TABLE prediction_sets ADD COLUMN params TEXT;                -- JSON object of hyper-parameters
ALTER TABLE prediction_sets ADD COLUMN feature_names TEXT;         -- JSON array
ALTER TABLE prediction_sets ADD COLUMN classes TEXT;               -- JSON array of class labels, classifiers only
ALTER TABLE prediction_sets ADD COLUMN training_rows INTEGER;
ALTER TABLE prediction_sets ADD COLUMN fit_seconds REAL;
ALTER TABLE prediction_sets ADD COLUMN sklearn_version TEXT;
ALTER TABLE prediction_sets ADD COLUMN environment TEXT;           -- JSON: python, sklearn, joblib, numpy, scipy
ALTER TABLE prediction_sets ADD COLUMN self_check TEXT;            -- JSON: held-out inputs and the answers given

-- Phase 4 did not stop a model type from having several current rows. Keep every row, but
-- leave only the newest of them current, so that the rule below can hold.
UPDATE prediction_sets
   SET is_current = 0
 WHERE is_current
   AND id NOT IN (SELECT MAX(id) FROM prediction_sets WHERE is_current GROUP BY model_type);

-- At most one current prediction set per model type, enforced by the database itself.
CREATE UNIQUE INDEX ux_prediction_sets_one_current
    ON prediction_sets (model_type) WHERE is_current;

-- Feature names of a dataset, recorded when its history is ingested.
CREATE TABLE datasets (
    name          TEXT PRIMARY KEY,
    feature_names TEXT NOT NULL,   -- JSON array
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
