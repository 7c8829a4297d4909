-- A model type's sets are read a page at a time and each lookup through an index, so that what a call costs
-- follows the page or the sets it needs, never the whole history (issue 17; tests/test_query_plans.py).
-- ListPredictionSets, newest first: (created_at, id) descending within a model type, also the keyset of its
-- page tokens and the range of created_after. It has idx_prediction_sets_type's columns first, and replaces it.
DROP INDEX IF EXISTS idx_prediction_sets_type;
CREATE INDEX idx_prediction_sets_newest ON prediction_sets (model_type, created_at, id);
-- The same order over the sets whose artifact retention has not deleted: ListPredictionSets without archived
-- sets, garbage collection, the start-up fallback and the versions of V2 ModelMetadata. Retention archives
-- all but a few sets per type, so this index stays about as small as what it serves.
CREATE INDEX idx_prediction_sets_unarchived ON prediction_sets (model_type, created_at, id)
    WHERE archived_at IS NULL;
-- Which set records a file: the registrar after a failed Train, the start-up check for orphan artifacts.
CREATE INDEX idx_prediction_sets_artifact ON prediction_sets (model_artifact_path)
    WHERE model_artifact_path IS NOT NULL;
-- The promotions of a set: the foreign key's child side, which SQLite's checks of a new set would
-- otherwise plan as a scan of the whole promotion log.
CREATE INDEX idx_promotions_set ON promotions (prediction_set_id);
