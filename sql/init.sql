-- The extension, and the helper the other tests run statements through: a
-- statement's SQLSTATE and message, or 00000 when it succeeds.
CREATE EXTENSION monk;
CREATE FUNCTION try(stmt text, OUT code text, OUT message text, OUT detail text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    code := '00000';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                            detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
    -- the database clock changes from run to run
    detail := regexp_replace(detail, 'clock reads [0-9T:.-]+Z', 'clock reads <now>');
END $$;

-- Default keys begin with sync_ and the database's id, drawn at random when
-- the extension is created: one of 16 hex digits, which a row inserted into
-- monk.database_id replaces (as a restore does).  The other tests' keys
-- then read sync_a1b2c3d4e5f60718_...
SELECT id OPERATOR(pg_catalog.~) '^[0-9a-f]{16}$' AS drawn, count(*) OVER () FROM monk.database_id;
INSERT INTO monk.database_id VALUES ('a1b2c3d4e5f60718');
SELECT * FROM monk.database_id;
SELECT monk_send('api_call', 'cus_1');
SELECT * FROM try($$INSERT INTO monk.database_id VALUES ('EU-1')$$);
SELECT * FROM try($$SET monk.idempotency_prefix = E'sync_\n'$$);
-- a prefix, when set, is the whole prefix (as in 0.3)
SET monk.idempotency_prefix = 'eu1_';
SELECT monk_send('api_call', 'cus_1');
RESET monk.idempotency_prefix;
SELECT monk_send('api_call', 'cus_1');
-- without an id, a default key cannot be made (nothing is queued)
BEGIN;
DELETE FROM monk.database_id;
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1')$$);
ROLLBACK;
SELECT monk_send('api_call', 'cus_1');
DELETE FROM monk.outbox;
