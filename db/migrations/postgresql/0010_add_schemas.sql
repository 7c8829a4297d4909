-- Typed tables (issue 23): a dataset's columns are named numbers or strings, with missing values, and a set
-- records the inputs its pipeline takes. NULL in either: numbers only, named by feature_names, as every dataset
-- and set recorded before this migration is (server/domain.py Schema).
ALTER TABLE datasets ADD COLUMN column_types TEXT;            -- JSON: {"columns": [[name, "number"|"string"], ...]}
ALTER TABLE prediction_sets ADD COLUMN input_schema TEXT;     -- JSON: the same, and "by_name" for DataFrame pipelines
-- A segment's features: 'f8' (row-major little-endian float64, as before) or 'arrow' (an Arrow IPC stream of
-- one record batch, one typed column per schema column, nulls where missing).
ALTER TABLE data_segments ADD COLUMN features_format TEXT NOT NULL DEFAULT 'f8';
