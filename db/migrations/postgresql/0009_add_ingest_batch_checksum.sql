-- A batch sent again is answered as already stored only if it holds the rows that were stored (issue 22): each
-- batch recorded from now on keeps the SHA-256 of its rows and targets (server/storage/ingests.py,
-- content_sha256). Batches recorded before have none: a copy of one of them is compared by its first row and
-- row count only, as before.
ALTER TABLE ingest_batches ADD COLUMN content_sha256 TEXT;
