-- With an artifact HMAC key configured (PREDSERVE_ARTIFACT_HMAC_KEY), every new prediction set records
-- an HMAC-SHA256 over its model type and its artifact's path, size and SHA-256. The server then refuses
-- to load a set whose signature is missing or wrong, so a write to this database alone cannot make it
-- unpickle a file of an attacker's choosing. NULL for sets trained without a key.
ALTER TABLE prediction_sets ADD COLUMN artifact_signature TEXT;   -- hex HMAC-SHA256, see server/storage/artifacts.py
