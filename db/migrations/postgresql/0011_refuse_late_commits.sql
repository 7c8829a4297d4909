-- A Train commits only while its caller can still be told (issue 24). Its transaction sets
-- predserve.commit_by (server/storage/postgres.py, _bound_by), and this deferred trigger, which runs inside
-- COMMIT itself, refuses the commit once PostgreSQL's clock is past it: a server frozen (SIGSTOP, a paused VM)
-- in the middle of a Train and resumed after the caller gave up records nothing. Transactions that set no
-- deadline (promote, gc, imports, ingest) are not affected.
CREATE FUNCTION predserve_refuse_late_commit() RETURNS trigger LANGUAGE plpgsql AS '
DECLARE
    commit_by text := current_setting(''predserve.commit_by'', true);
BEGIN
    IF commit_by IS NOT NULL AND commit_by <> '''' AND clock_timestamp() > commit_by::timestamptz THEN
        RAISE EXCEPTION ''commit refused: the caller''''s deadline has passed (%)'', commit_by;
    END IF;
    RETURN NULL;
END
';
CREATE CONSTRAINT TRIGGER prediction_sets_commit_deadline
    AFTER INSERT OR UPDATE ON prediction_sets
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION predserve_refuse_late_commit();
