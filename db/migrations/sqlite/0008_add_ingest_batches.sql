-- A large file is ingested as consecutive batches of one ingest (issue 17). Each stored batch is recorded here
-- in the transaction that appends its rows, so that a batch sent again (a client that lost the answer, a
-- re-run after a crash) is answered as already stored instead of being appended twice, and an interrupted
-- ingest resumes after its last stored batch (server/storage/ingests.py).
CREATE TABLE ingest_batches (
    ingest_id    TEXT    NOT NULL,   -- chosen by the client: the CLI derives it from the dataset and the file
    batch_number INTEGER NOT NULL,   -- 0, 1, 2, ... in the order of the ingest's rows
    dataset      TEXT    NOT NULL,
    first_row    INTEGER NOT NULL,   -- the batch's first row, counted from the ingest's first row
    row_count    INTEGER NOT NULL,
    recorded_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (ingest_id, batch_number)
);
