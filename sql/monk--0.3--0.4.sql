/*
 * monk 0.3 -> 0.4: the order of a key's versions (dead letters that a newer
 * version supersedes are never queued again; pg_dump leaves out versions
 * that a newer queued one supersedes).  Nothing queued is touched.
 */
\echo Use "ALTER EXTENSION monk UPDATE TO '0.4'" to load this file. \quit

-- Names a view binds when it is created are resolved under the extension's
-- schema (public, which a database's owner can create objects in): every
-- function a view calls is qualified, so that a public.unnest(bigint[])
-- made beforehand is never bound.
CREATE OR REPLACE VIEW monk.sent AS
    SELECT l.id, l.idempotency_key, l.event::json AS event, l.queued_at,
           b.accepted_at, b.http_status, b.attempts
      FROM monk.sent_batch b
      CROSS JOIN LATERAL ROWS FROM (pg_catalog.unnest(b.txids), pg_catalog.unnest(b.ids)) AS e(txid, id)
      JOIN monk.log l ON l.txid = e.txid AND l.id = e.id;

ALTER TABLE monk.dead_letter ADD COLUMN superseded_id bigint;
-- the outbox's dead letters by key: the worker marks those a newer version of their key supersedes
CREATE INDEX dead_letter_outbox_key ON monk.dead_letter USING hash (idempotency_key) WHERE source = 'outbox';
COMMENT ON COLUMN monk.dead_letter.superseded_id IS
    'the outbox id of a newer version of this key, accepted by the API or queued: monk_retry_dead_letters no longer queues this one';
-- the dead letters of 0.3 whose key has a newer version in the log now
UPDATE monk.dead_letter d
   SET superseded_id = (SELECT pg_catalog.max(l.id) FROM monk.log l
                         WHERE l.idempotency_key = d.idempotency_key AND l.id > d.source_id)
 WHERE d.source = 'outbox'
   AND EXISTS (SELECT FROM monk.log l WHERE l.idempotency_key = d.idempotency_key AND l.id > d.source_id);

-- pg_dump keeps the queued events (those of transactions the frontier does
-- not see, as in monk.outbox: pg_dump refuses a view in a filter), but a
-- version of a key that a newer queued version supersedes (restored, each
-- segment in a transaction of its own, an older version could otherwise be
-- read after a newer one), the dead letters and the cursors.
SELECT pg_catalog.pg_extension_config_dump('monk.log_0', 'WHERE (txid >= (SELECT frontier_xmax FROM monk.queue_state) OR txid = ANY ((SELECT frontier_xip FROM monk.queue_state)::bigint[]))
   AND NOT EXISTS (SELECT FROM monk.log n WHERE n.idempotency_key = log_0.idempotency_key AND n.id > log_0.id
                      AND (n.txid >= (SELECT frontier_xmax FROM monk.queue_state) OR n.txid = ANY ((SELECT frontier_xip FROM monk.queue_state)::bigint[])))');
SELECT pg_catalog.pg_extension_config_dump('monk.log_1', 'WHERE (txid >= (SELECT frontier_xmax FROM monk.queue_state) OR txid = ANY ((SELECT frontier_xip FROM monk.queue_state)::bigint[]))
   AND NOT EXISTS (SELECT FROM monk.log n WHERE n.idempotency_key = log_1.idempotency_key AND n.id > log_1.id
                      AND (n.txid >= (SELECT frontier_xmax FROM monk.queue_state) OR n.txid = ANY ((SELECT frontier_xip FROM monk.queue_state)::bigint[])))');
SELECT pg_catalog.pg_extension_config_dump('monk.log_2', 'WHERE (txid >= (SELECT frontier_xmax FROM monk.queue_state) OR txid = ANY ((SELECT frontier_xip FROM monk.queue_state)::bigint[]))
   AND NOT EXISTS (SELECT FROM monk.log n WHERE n.idempotency_key = log_2.idempotency_key AND n.id > log_2.id
                      AND (n.txid >= (SELECT frontier_xmax FROM monk.queue_state) OR n.txid = ANY ((SELECT frontier_xip FROM monk.queue_state)::bigint[])))');
SELECT pg_catalog.pg_extension_config_dump('monk.log_3', 'WHERE (txid >= (SELECT frontier_xmax FROM monk.queue_state) OR txid = ANY ((SELECT frontier_xip FROM monk.queue_state)::bigint[]))
   AND NOT EXISTS (SELECT FROM monk.log n WHERE n.idempotency_key = log_3.idempotency_key AND n.id > log_3.id
                      AND (n.txid >= (SELECT frontier_xmax FROM monk.queue_state) OR n.txid = ANY ((SELECT frontier_xip FROM monk.queue_state)::bigint[])))');

-- the dead letters' ids go on after a restore where the restored ones end
SELECT pg_catalog.pg_extension_config_dump('monk.dead_letter_id_seq', '');

-- replaced in place: the grants made on it stay
CREATE OR REPLACE FUNCTION @extschema@.monk_retry_dead_letters(dead_letter_ids bigint[] DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    requeued bigint;
    kept bigint;
BEGIN
    -- No version is queued while the retry decides: it needs the log to
    -- itself (no transaction that queued events still open, a prepared one
    -- included), and one that starts later waits for this one's commit (and
    -- gets a higher id).  It never waits: waiting, it would queue every
    -- monk_send of the database behind it.
    BEGIN
        LOCK TABLE monk.log IN SHARE MODE NOWAIT;
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION 'monk_retry_dead_letters cannot run while transactions that queued events are open'
              USING ERRCODE = 'lock_not_available',
                    DETAIL = 'A dead letter is queued again only when no newer version of its key can be committed meanwhile.',
                    HINT = 'Try again in a moment; pg_locks shows the open transactions on monk.log''s segments (a prepared one too).';
    END;
    -- A dead letter whose key has a newer version in the log (queued, or kept
    -- for monk.retention) is superseded like one whose newer version the
    -- worker saw accepted: queued again, it would replace that version at the
    -- API.  It stays, marked.
    UPDATE monk.dead_letter d
       SET superseded_id = (SELECT max(l.id) FROM monk.log l
                             WHERE l.idempotency_key = d.idempotency_key AND l.id > d.source_id)
     WHERE (dead_letter_ids IS NULL OR d.id = ANY (dead_letter_ids))
       AND d.source = 'outbox' AND d.superseded_id IS NULL
       AND EXISTS (SELECT FROM monk.log l WHERE l.idempotency_key = d.idempotency_key AND l.id > d.source_id);
    WITH moved AS (
        DELETE FROM monk.dead_letter
         WHERE (dead_letter_ids IS NULL OR id = ANY (dead_letter_ids))
           AND source = 'outbox' AND event IS NOT NULL AND idempotency_key IS NOT NULL
           AND superseded_id IS NULL
        RETURNING source_id, idempotency_key, event, queued_at
    )
    SELECT count(monk.requeue(coalesce(source_id, nextval('monk.outbox_id_seq')), idempotency_key,
                              event, coalesce(queued_at, now())))
      INTO requeued
      FROM (SELECT * FROM moved ORDER BY source_id) m;
    SELECT count(*) INTO kept FROM monk.dead_letter
     WHERE (dead_letter_ids IS NULL OR id = ANY (dead_letter_ids)) AND source = 'outbox'
       AND superseded_id IS NOT NULL;
    IF kept > 0 THEN
        RAISE NOTICE '% dead letters were not queued again: a newer version of their key was accepted or is queued', kept
              USING HINT = 'Their superseded_id names that version; delete them when they are no longer needed.';
    END IF;
    RETURN requeued;
END $$;
COMMENT ON FUNCTION @extschema@.monk_retry_dead_letters(bigint[])
    IS 'queue dead letters of the outbox again with their original keys, unless a newer version of their key supersedes them; returns how many were queued';
COMMENT ON FUNCTION @extschema@.monk_retry_dead_letters(bigint[])
    IS 'queue dead letters of the outbox again with their original keys, unless a newer version of their key supersedes them; returns how many were queued';

-- monk.status counts answers of another class (1xx, 3xx: requests_other),
-- which 0.3 counted as requests without an answer.
DROP VIEW monk.status;
DROP FUNCTION monk.worker_status();
-- Live figures of the workers, from shared memory.
CREATE FUNCTION monk.worker_status(
    OUT database          text,
    OUT pid               integer,
    OUT state             text,
    OUT circuit           text,
    OUT events_sent       bigint,
    OUT events_failed     bigint,
    OUT events_retried    bigint,
    OUT requests_2xx      bigint,
    OUT requests_4xx      bigint,
    OUT requests_5xx      bigint,
    OUT requests_failed   bigint,
    OUT started_at        timestamptz,
    OUT last_success_at   timestamptz,
    OUT last_error        text,
    OUT last_error_at     timestamptz,
    OUT requests_other    bigint)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'monk_worker_status'
LANGUAGE C VOLATILE;

-- One row for the current database: the worker and its outbox.
CREATE VIEW monk.status AS
    SELECT pg_catalog.current_database()::text AS database,
           w.pid IS NOT NULL AS worker_running,
           w.pid AS worker_pid,
           coalesce(w.state, 'not running') AS worker_state,
           o.depth AS outbox_depth,
           pg_catalog.now() - o.oldest AS oldest_event_age,
           d.dead_letters,
           w.events_sent, w.events_failed, w.events_retried,
           w.requests_2xx, w.requests_4xx, w.requests_5xx, w.requests_failed, w.requests_other,
           coalesce(w.circuit, 'closed') AS circuit,
           w.last_error, w.last_error_at, w.last_success_at, w.started_at
      FROM (SELECT pg_catalog.count(*) AS depth, pg_catalog.min(queued_at) AS oldest
              FROM monk.outbox) o
      CROSS JOIN (SELECT pg_catalog.count(*) AS dead_letters FROM monk.dead_letter) d
      LEFT JOIN monk.worker_status() w ON w.database = pg_catalog.current_database();

-- Monitoring roles may read the status (no secrets in it), and nothing else.
GRANT SELECT ON monk.status TO pg_monitor;

-- The monk_batch_export calls running in the server, from shared memory.
CREATE FUNCTION monk.export_progress_rows(
    OUT pid             integer,
    OUT datid           oid,
    OUT cursor_name     text,
    OUT source          text,
    OUT state           text,
    OUT started_at      timestamptz,
    OUT rows_read       bigint,
    OUT rows_done       bigint,
    OUT rows_estimated  bigint,
    OUT rows_per_second double precision,
    OUT cursor_last_id  bigint,
    OUT events_sent     bigint,
    OUT events_failed   bigint,
    OUT batches         integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'monk_export_progress'
LANGUAGE C VOLATILE;

-- One row per running export, in any database: how far it is.
CREATE VIEW monk.export_progress AS
    SELECT p.pid, d.datname AS database, p.cursor_name, p.source, p.state, p.started_at,
           p.rows_read, p.rows_done, p.rows_estimated,
           CASE WHEN p.rows_estimated OPERATOR(pg_catalog.>) 0
                     AND p.rows_done OPERATOR(pg_catalog.<=) p.rows_estimated
                THEN pg_catalog.round(100::pg_catalog.numeric OPERATOR(pg_catalog.*) p.rows_done::pg_catalog.numeric
                                      OPERATOR(pg_catalog./) p.rows_estimated::pg_catalog.numeric, 1)
           END AS percent_done,
           pg_catalog.round(p.rows_per_second::pg_catalog.numeric, 1) AS rows_per_second,
           p.cursor_last_id, p.events_sent, p.events_failed, p.batches
      FROM monk.export_progress_rows() p
      LEFT JOIN pg_catalog.pg_database d ON d.oid OPERATOR(pg_catalog.=) p.datid;
-- the view checks EXECUTE on its function as the reader: monitoring roles only
REVOKE ALL ON FUNCTION monk.export_progress_rows() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION monk.export_progress_rows() TO pg_monitor;
GRANT SELECT ON monk.export_progress TO pg_monitor;

-- Where monk is not preloaded, a monk_capture trigger would fail at its first
-- row, in the application: say so when it is created.  In SQL, not C, so that
-- no CREATE TRIGGER of the database depends on monk's library; as its owner,
-- who may read shared_preload_libraries, with the search_path pinned; never
-- failing the CREATE TRIGGER.
CREATE FUNCTION monk.capture_trigger_created() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    created record;
BEGIN
    -- preloaded: the server checked the trigger already (ddl.c)
    IF EXISTS (SELECT FROM unnest(string_to_array(current_setting('shared_preload_libraries'), ',')) AS l(name)
                WHERE regexp_replace(btrim(l.name, ' "'), '^.*/|\.so$', '', 'g') = 'monk') THEN
        RETURN;
    END IF;
    FOR created IN
        SELECT t.tgname
          FROM pg_event_trigger_ddl_commands() c
          JOIN pg_trigger t ON t.oid = c.objid
          JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = t.tgfoid AND d.deptype = 'e'
          JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'monk'
          JOIN pg_proc p ON p.oid = t.tgfoid AND p.proname = 'monk_capture'
         WHERE c.classid = 'pg_trigger'::regclass
    LOOP
        RAISE WARNING USING
            ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = format('monk is not loaded by shared_preload_libraries: trigger "%s" will fail at the first row it captures', created.tgname),
            DETAIL = 'monk_capture queues its events through shared memory, which exists only when the server preloads monk.',
            HINT = 'Add monk to shared_preload_libraries (a single line listing every library, e.g. ''pg_cron,monk'') and restart the server.';
    END LOOP;
EXCEPTION
    -- a warning only: it never fails a CREATE TRIGGER (an owner who lost
    -- superuser may not read shared_preload_libraries, say)
    WHEN OTHERS THEN
        RETURN;
END
$$;
REVOKE ALL ON FUNCTION monk.capture_trigger_created() FROM PUBLIC;
CREATE EVENT TRIGGER monk_capture_trigger_created ON ddl_command_end
    WHEN TAG IN ('CREATE TRIGGER')
    EXECUTE FUNCTION monk.capture_trigger_created();

-- monk_batch_export finds rows committed late below its cursor (pending_ids),
-- and a new cursor starts before every id (NULL), not at 0: ids of 0 and
-- below are exported too.  An existing cursor keeps its position.
ALTER TABLE monk.sync_state
    ALTER COLUMN last_id DROP NOT NULL,
    ALTER COLUMN last_id DROP DEFAULT,
    ADD COLUMN pending_ids bigint[] NOT NULL DEFAULT '{}';
COMMENT ON TABLE monk.sync_state IS 'cursors of monk_batch_export: rows with id > last_id (all rows while it is NULL) are still to be sent, and those with an id in pending_ids';
COMMENT ON COLUMN monk.sync_state.pending_ids IS 'ids at or below last_id of rows that a transaction in progress at the last run was inserting (or that committed during it): read again by the next run';

-- Default keys unique to the database (issue 22).  0.3's cursors (the
-- column's default: existing rows, and rows restored from a dump of 0.3)
-- and the tables 0.3 captured keep 0.3's default keys, so that a re-export
-- or a correction lands on the key already billed; a new cursor is made
-- with legacy_keys false.  Queued events hold their keys already.
ALTER TABLE monk.sync_state ADD COLUMN legacy_keys boolean NOT NULL DEFAULT true;
COMMENT ON COLUMN monk.sync_state.legacy_keys IS 'a cursor of 0.3 (or restored from a dump of 0.3): its default keys are 0.3''s, sync_ and the id; a new cursor''s hold the database''s id';

-- The database's part of the default idempotency keys (sync_<id>_...):
-- drawn at random when the extension is created, so that the default keys
-- of two databases, of one cluster or of two, never meet.  pg_dump keeps
-- it: a restore derives the keys the original did.  One row; inserting one
-- replaces it (as a restore does), and every session takes the new one at
-- its next transaction.  Where the trigger does not fire (a data-only
-- restore with --disable-triggers), the row inserted last is the id.
CREATE TABLE monk.database_id (
    id text NOT NULL
       DEFAULT pg_catalog.left(pg_catalog.encode(pg_catalog.sha256(pg_catalog.uuid_send(pg_catalog.gen_random_uuid())), 'hex'), 16)
       CHECK (id OPERATOR(pg_catalog.~) '^[0-9a-f]{16}$')
);
COMMENT ON TABLE monk.database_id IS 'the database''s id in default idempotency keys (sync_<id>_...); inserting a row replaces it';
CREATE FUNCTION monk.database_id_changed() RETURNS trigger
AS 'MODULE_PATHNAME', 'monk_database_id_changed'
LANGUAGE C;
REVOKE ALL ON FUNCTION monk.database_id_changed() FROM PUBLIC;
CREATE TRIGGER database_id_replace BEFORE INSERT ON monk.database_id
    FOR EACH ROW EXECUTE FUNCTION monk.database_id_changed();
CREATE TRIGGER database_id_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON monk.database_id
    FOR EACH STATEMENT EXECUTE FUNCTION monk.database_id_changed();
INSERT INTO monk.database_id DEFAULT VALUES;

-- Tables captured under 0.3, named as keys name them: their rows keep 0.3's
-- default keys (sync_ alone), so that a correction lands on the key already
-- billed.  Filled by the update from 0.3; empty in a new installation.
CREATE TABLE monk.capture_legacy (
    source text PRIMARY KEY
);
COMMENT ON TABLE monk.capture_legacy IS 'tables captured under 0.3: their default keys stay 0.3''s (sync_ then table, key and event)';

-- Sources exported under 0.3, named as monk.sync_state names them: a cursor
-- made for one of them (again, after its cursor was deleted) keeps 0.3's
-- default keys.  Filled by the update from 0.3; empty in a new installation.
CREATE TABLE monk.export_legacy (
    source text PRIMARY KEY
);
COMMENT ON TABLE monk.export_legacy IS 'sources exported under 0.3: a new cursor of one keeps 0.3''s default keys (sync_ then the id)';

-- the tables 0.3 captured: where each monk_capture trigger was created (a
-- partition's clone keys its rows after the partitioned table at the top)
INSERT INTO monk.capture_legacy (source)
SELECT DISTINCT pg_catalog.format('%I.%I', n.nspname, r.relname)
  FROM pg_catalog.pg_trigger t
  JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) t.tgrelid
  JOIN pg_catalog.pg_class r
    ON r.oid OPERATOR(pg_catalog.=) CASE WHEN t.tgparentid OPERATOR(pg_catalog.<>) '0'::pg_catalog.oid AND c.relispartition
                                         THEN pg_catalog.pg_partition_root(c.oid)::pg_catalog.oid ELSE c.oid END
  JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) r.relnamespace
 WHERE t.tgfoid OPERATOR(pg_catalog.=) '@extschema@.monk_capture()'::pg_catalog.regprocedure::pg_catalog.oid;

-- the sources 0.3 exported
INSERT INTO monk.export_legacy (source) SELECT DISTINCT source FROM monk.sync_state;

SELECT pg_catalog.pg_extension_config_dump('monk.database_id', '');
SELECT pg_catalog.pg_extension_config_dump('monk.capture_legacy', '');
SELECT pg_catalog.pg_extension_config_dump('monk.export_legacy', '');
