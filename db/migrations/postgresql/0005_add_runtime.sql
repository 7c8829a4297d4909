-- A compiled form of the pipeline (ONNX Runtime, treelite, ...) answers Predict once it has been proven to
-- answer as the pipeline does (server/runtimes/). It is persisted beside the joblib artifact with the same
-- guarantees: atomic write, SHA-256 and size, and an HMAC-SHA256 when a key is set. NULL runtime_path: the
-- pipeline itself answers, and runtime_record says why.
ALTER TABLE prediction_sets ADD COLUMN runtime_path TEXT;          -- relative to the models directory
ALTER TABLE prediction_sets ADD COLUMN runtime_sha256 TEXT;
ALTER TABLE prediction_sets ADD COLUMN runtime_size_bytes INTEGER;
ALTER TABLE prediction_sets ADD COLUMN runtime_signature TEXT;
-- JSON: the runtime and its library version, the rows the proof checked, the largest deviation seen,
-- the training range the proof sampled (checked again at load), or why there is no compiled form.
ALTER TABLE prediction_sets ADD COLUMN runtime_record TEXT;
