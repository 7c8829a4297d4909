-- Train reads a dataset from a binary copy of data_history: each ingested batch once more as one segment, its
-- features as row-major little-endian float64 in one BLOB and its targets beside them, written in the same
-- transaction as the batch's JSON rows (server/storage/history.py). data_history stays the record; a dataset
-- whose segments do not add up to its rows is read from its JSON rows, as before.
CREATE TABLE data_segments (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    dataset       TEXT    NOT NULL,
    first_row_id  INTEGER NOT NULL,   -- the data_history ids of the dataset's rows this segment copies, in order
    last_row_id   INTEGER NOT NULL,
    row_count     INTEGER NOT NULL,
    feature_count INTEGER NOT NULL,
    features      BLOB    NOT NULL,   -- row_count x feature_count float64, little-endian, row after row
    target_kind   TEXT    NOT NULL,   -- 'int64', 'number', 'labels' or 'json' (server/storage/columns.py)
    targets       BLOB    NOT NULL,
    target_labels TEXT                -- 'labels' only: the JSON array its codes index
);
CREATE UNIQUE INDEX ux_data_segments_rows ON data_segments (dataset, first_row_id);
-- The rows a Phase-4 or Phase-5 database already holds are copied by this migration too, in its transaction,
-- 65,536 JSON rows at a time (copy_history in server/storage/history.py: SQL cannot write float64 bytes).
