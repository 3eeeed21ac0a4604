/*
 * monk 0.4: the transactional outbox of usage events, stored as an ordered
 * log of segments, and the functions that queue (monk_send, the monk_capture
 * trigger), preview and report them.  User-facing functions live in the
 * extension's schema (public by default); tables, views and internal
 * functions in schema monk, which PUBLIC cannot use.
 */
\echo Use "CREATE EXTENSION monk" to load this file. \quit

-- The Events API reads UTF-8: every server encoding converts to it but
-- MULE_INTERNAL, which has no conversion to UTF-8.
DO $$
BEGIN
    IF pg_catalog.getdatabaseencoding() OPERATOR(pg_catalog.=) 'MULE_INTERNAL' THEN
        RAISE EXCEPTION 'monk cannot be used in a database whose encoding is MULE_INTERNAL'
              USING ERRCODE = 'feature_not_supported',
                    DETAIL = 'The Events API reads UTF-8, and PostgreSQL has no conversion from MULE_INTERNAL to UTF-8.',
                    HINT = 'Create the database with another encoding (UTF8, or one that converts to UTF-8).';
    END IF;
END $$;

CREATE SCHEMA monk;
COMMENT ON SCHEMA monk IS 'monk: outbox, dead letters and export cursors of usage events';
REVOKE ALL ON SCHEMA monk FROM PUBLIC;

-- Events the API refused for good (400/422 after bisection), and rows of a
-- bulk export that failed validation.  monk_retry_dead_letters() queues them
-- again with their original keys.
CREATE TABLE monk.dead_letter (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source          text        NOT NULL,
    source_id       bigint,
    idempotency_key text,
    event           text,
    http_status     integer,
    error           text        NOT NULL,
    response_body   text,
    attempts        integer     NOT NULL DEFAULT 0,
    queued_at       timestamptz,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    superseded_id   bigint
);
-- one dead letter per outbox event, even when a refusal is seen again after a restart
CREATE UNIQUE INDEX dead_letter_outbox ON monk.dead_letter (source_id) WHERE source = 'outbox';
-- the outbox's dead letters by key: the worker marks those a newer version of their key supersedes
CREATE INDEX dead_letter_outbox_key ON monk.dead_letter USING hash (idempotency_key) WHERE source = 'outbox';
COMMENT ON COLUMN monk.dead_letter.superseded_id IS
    'the outbox id of a newer version of this key, accepted by the API or queued: monk_retry_dead_letters no longer queues this one';
COMMENT ON TABLE monk.dead_letter IS 'events the Events API refused, with its answer; source is ''outbox'' or an export cursor';

-- The outbox is a log: events are appended to the current segment (a
-- partition of monk.log) with the id of the transaction that wrote them, and
-- are never updated or deleted one by one.  The worker reads the events that
-- became visible between two snapshots of its own, in the order of their
-- transactions' commits, and keeps in monk.queue_state the snapshot up to
-- which every event is settled (accepted or dead-lettered).  A segment whose
-- events are all settled is truncated, monk.retention after it was settled.
-- Logged: the log survives crashes and reaches replicas.  "event" holds the
-- JSON sent, rendered once when the event was queued, key included.
CREATE SEQUENCE monk.outbox_id_seq;
CREATE TABLE monk.log (
    segment         smallint    NOT NULL,
    txid            bigint      NOT NULL,
    id              bigint      NOT NULL,
    idempotency_key text        NOT NULL,
    event           text        NOT NULL,
    queued_at       timestamptz NOT NULL
) PARTITION BY LIST (segment);
COMMENT ON TABLE monk.log IS 'the outbox''s segments: every event queued and not yet truncated away, settled or not';
CREATE TABLE monk.log_0 PARTITION OF monk.log FOR VALUES IN (0);
CREATE TABLE monk.log_1 PARTITION OF monk.log FOR VALUES IN (1);
CREATE TABLE monk.log_2 PARTITION OF monk.log FOR VALUES IN (2);
CREATE TABLE monk.log_3 PARTITION OF monk.log FOR VALUES IN (3);
CREATE INDEX log_txid_id ON monk.log (txid, id);

-- The worker's progress, the frontier: every event whose transaction is
-- visible in the snapshot (frontier_xmax, frontier_xip) is settled
-- (frontier_xmin is the smallest transaction id in progress in it); so is,
-- while the worker is inside the window that ends at the snapshot
-- (window_xmax, window_xip), every event visible there up to
-- (window_txid, window_id) in (txid, id) order.  cur_segment receives new
-- events.
CREATE TABLE monk.queue_state (
    frontier_xmin   bigint      NOT NULL DEFAULT 0,
    frontier_xmax   bigint      NOT NULL DEFAULT 0,
    frontier_xip    bigint[]    NOT NULL DEFAULT '{}',
    cur_segment     smallint    NOT NULL DEFAULT 0,
    window_xmax     bigint,
    window_xip      bigint[],
    window_txid     bigint,
    window_id       bigint,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
INSERT INTO monk.queue_state DEFAULT VALUES;
COMMENT ON TABLE monk.queue_state IS 'the monk worker''s frontier: events of transactions visible in it are settled';

-- One row per segment: when it became current, when all its events were
-- settled, when it was last truncated.
CREATE TABLE monk.segment (
    segment         smallint    PRIMARY KEY,
    rotated_at      timestamptz,
    settled_at      timestamptz,
    truncated_at    timestamptz
);
INSERT INTO monk.segment (segment, rotated_at) VALUES (0, now()), (1, NULL), (2, NULL), (3, NULL);

-- Retry state of events whose batch was parked (failed monk.max_retries times).
CREATE TABLE monk.outbox_attempts (
    id              bigint      PRIMARY KEY,
    attempts        integer     NOT NULL,
    next_attempt_at timestamptz,
    last_status     integer,
    last_error      text
);

-- The batches the API accepted, kept with their segment (the events'
-- (txid, id) pairs): what was sent (monk.sent), and which events past the
-- frontier are settled already.
CREATE TABLE monk.sent_batch (
    segment         smallint    NOT NULL,
    max_txid        bigint      NOT NULL,
    txids           bigint[]    NOT NULL,
    ids             bigint[]    NOT NULL,
    http_status     integer     NOT NULL,
    attempts        integer     NOT NULL,
    accepted_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sent_batch_max_txid ON monk.sent_batch (max_txid);
CREATE INDEX sent_batch_segment ON monk.sent_batch (segment);

-- The queued events: not yet settled (neither behind the frontier nor
-- dead-lettered; an event accepted past the frontier is listed until the
-- frontier passes it, a moment later).  Deleting from it discards events
-- that the worker has not read yet.
CREATE VIEW monk.outbox AS
    SELECT l.id, l.idempotency_key, l.event, l.queued_at,
           coalesce(a.attempts, 0) AS attempts, a.next_attempt_at, a.last_status, a.last_error,
           l.txid
      FROM (SELECT * FROM monk.log WHERE txid >= (SELECT frontier_xmax FROM monk.queue_state)
            UNION ALL
            SELECT * FROM monk.log WHERE txid = ANY ((SELECT frontier_xip FROM monk.queue_state)::bigint[])) l
      CROSS JOIN monk.queue_state q
      LEFT JOIN monk.outbox_attempts a ON a.id = l.id
     WHERE NOT (q.window_xmax IS NOT NULL AND l.txid < q.window_xmax AND l.txid <> ALL (q.window_xip)
                AND (l.txid, l.id) <= (q.window_txid, q.window_id))
       AND NOT EXISTS (SELECT FROM monk.dead_letter d WHERE d.source = 'outbox' AND d.source_id = l.id);
COMMENT ON VIEW monk.outbox IS 'usage events queued by monk_send and not yet accepted by the Events API (nor dead-lettered)';

CREATE FUNCTION monk.outbox_delete() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM monk.log WHERE txid = OLD.txid AND id = OLD.id;
    RETURN OLD;
END $$;
REVOKE ALL ON FUNCTION monk.outbox_delete() FROM PUBLIC;
CREATE TRIGGER outbox_delete INSTEAD OF DELETE ON monk.outbox
    FOR EACH ROW EXECUTE FUNCTION monk.outbox_delete();

-- Rows that reach a segment through SQL rather than monk_send (pg_restore)
-- belong to the transaction that writes them: a restored row's old
-- transaction id means nothing in this cluster.  (monk.requeue, behind
-- monk_retry_dead_letters, appends as monk_send does.)
CREATE FUNCTION monk.log_stamp() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.txid := pg_current_xact_id()::text::bigint;
    RETURN NEW;
END $$;
REVOKE ALL ON FUNCTION monk.log_stamp() FROM PUBLIC;
CREATE TRIGGER log_0_stamp BEFORE INSERT ON monk.log_0 FOR EACH ROW EXECUTE FUNCTION monk.log_stamp();
CREATE TRIGGER log_1_stamp BEFORE INSERT ON monk.log_1 FOR EACH ROW EXECUTE FUNCTION monk.log_stamp();
CREATE TRIGGER log_2_stamp BEFORE INSERT ON monk.log_2 FOR EACH ROW EXECUTE FUNCTION monk.log_stamp();
CREATE TRIGGER log_3_stamp BEFORE INSERT ON monk.log_3 FOR EACH ROW EXECUTE FUNCTION monk.log_stamp();

-- What was sent (kept monk.retention after its segment was settled).
CREATE VIEW monk.sent AS
    SELECT l.id, l.idempotency_key, l.event::json AS event, l.queued_at,
           b.accepted_at, b.http_status, b.attempts
      FROM monk.sent_batch b
      CROSS JOIN LATERAL ROWS FROM (pg_catalog.unnest(b.txids), pg_catalog.unnest(b.ids)) AS e(txid, id)
      JOIN monk.log l ON l.txid = e.txid AND l.id = e.id;
COMMENT ON VIEW monk.sent IS 'events the Events API accepted, while their segment is kept (monk.retention)';

-- One cursor per monk_batch_export source: the last id accepted or
-- dead-lettered.
CREATE TABLE monk.sync_state (
    cursor_name     text        PRIMARY KEY,
    source          text        NOT NULL,
    last_id         bigint,
    events_sent     bigint      NOT NULL DEFAULT 0,
    events_failed   bigint      NOT NULL DEFAULT 0,
    last_run_at     timestamptz,
    last_error      text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    pending_ids     bigint[]    NOT NULL DEFAULT '{}',
    legacy_keys     boolean     NOT NULL DEFAULT true
);
COMMENT ON TABLE monk.sync_state IS 'cursors of monk_batch_export: rows with id > last_id (all rows while it is NULL) are still to be sent, and those with an id in pending_ids';
COMMENT ON COLUMN monk.sync_state.legacy_keys IS 'a cursor of 0.3 (or restored from a dump of 0.3): its default keys are 0.3''s, sync_ and the id; a new cursor''s hold the database''s id';
COMMENT ON COLUMN monk.sync_state.pending_ids IS 'ids at or below last_id of rows that a transaction in progress at the last run was inserting (or that committed during it): read again by the next run';

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
SELECT pg_catalog.pg_extension_config_dump('monk.outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('monk.dead_letter', '');
-- the dead letters' ids go on after a restore where the restored ones end
SELECT pg_catalog.pg_extension_config_dump('monk.dead_letter_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('monk.sync_state', '');
SELECT pg_catalog.pg_extension_config_dump('monk.database_id', '');
SELECT pg_catalog.pg_extension_config_dump('monk.capture_legacy', '');
SELECT pg_catalog.pg_extension_config_dump('monk.export_legacy', '');

-- Queue an event in the caller's transaction; returns its idempotency key.
CREATE FUNCTION @extschema@.monk_send(
    event_name           text,
    external_customer_id text        DEFAULT NULL,
    properties           jsonb       DEFAULT NULL,
    event_time           timestamptz DEFAULT NULL,
    idempotency_key      text        DEFAULT NULL,
    customer_id          uuid        DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME', 'monk_send'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.monk_send(text, text, jsonb, timestamptz, text, uuid)
    IS 'queue a usage event in the current transaction; returns its idempotency key';

-- The same, with the event in the API's own camelCase shape.
CREATE FUNCTION @extschema@.monk_send(event jsonb)
RETURNS text
AS 'MODULE_PATHNAME', 'monk_send_jsonb'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.monk_send(jsonb)
    IS 'queue a usage event given as {"eventName", "externalCustomerId" | "customerId", "properties", "timestamp", "idempotencyKey"}';

-- Queueing billable events is a privilege: grant EXECUTE to the roles that may.
REVOKE ALL ON FUNCTION @extschema@.monk_send(text, text, jsonb, timestamptz, text, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION @extschema@.monk_send(jsonb) FROM PUBLIC;

-- The trigger function that turns rows into events (see the README's
-- "Capturing a table"); CREATE TRIGGER needs EXECUTE on it, firing does not.
CREATE FUNCTION @extschema@.monk_capture()
RETURNS trigger
AS 'MODULE_PATHNAME', 'monk_capture'
LANGUAGE C;
COMMENT ON FUNCTION @extschema@.monk_capture()
    IS 'trigger: queue each inserted or updated row as a usage event (arguments: event name, external_customer_id=, customer_id=, properties=, property.<name>=, constant.<name>=, timestamp=, key=)';
REVOKE ALL ON FUNCTION @extschema@.monk_capture() FROM PUBLIC;

-- The JSON monk_send would queue, without queueing it (validation included).
CREATE FUNCTION monk.event_json(
    event_name           text,
    external_customer_id text        DEFAULT NULL,
    properties           jsonb       DEFAULT NULL,
    event_time           timestamptz DEFAULT NULL,
    idempotency_key      text        DEFAULT NULL,
    customer_id          uuid        DEFAULT NULL)
RETURNS json
AS 'MODULE_PATHNAME', 'monk_event_json'
LANGUAGE C STABLE PARALLEL SAFE;

CREATE FUNCTION monk.event_json(event jsonb)
RETURNS json
AS 'MODULE_PATHNAME', 'monk_event_json_jsonb'
LANGUAGE C STABLE PARALLEL SAFE;

-- The queued events as JSON, as the worker will send them.
CREATE VIEW monk.outbox_events AS
    SELECT id, idempotency_key, event::json AS event, queued_at, attempts,
           next_attempt_at, last_status, last_error
      FROM monk.outbox;

-- Queue an event already rendered, with its key (monk_retry_dead_letters).
CREATE FUNCTION monk.requeue(id bigint, idempotency_key text, event text, queued_at timestamptz)
RETURNS void
AS 'MODULE_PATHNAME', 'monk_requeue'
LANGUAGE C VOLATILE STRICT;
REVOKE ALL ON FUNCTION monk.requeue(bigint, text, text, timestamptz) FROM PUBLIC;

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
GRANT USAGE ON SCHEMA monk TO pg_monitor;
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

-- Wake this database's worker when the current transaction commits.
CREATE FUNCTION monk.wake_worker() RETURNS void
AS 'MODULE_PATHNAME', 'monk_wake_worker'
LANGUAGE C VOLATILE;
REVOKE ALL ON FUNCTION monk.wake_worker() FROM PUBLIC;

-- Queue dead letters of the outbox again, with their original event and
-- key (after the cause was fixed, for example a customer created in Monk).
-- NULL selects every dead letter that came from the outbox.
CREATE FUNCTION @extschema@.monk_retry_dead_letters(dead_letter_ids bigint[] DEFAULT NULL)
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
REVOKE ALL ON FUNCTION @extschema@.monk_retry_dead_letters(bigint[]) FROM PUBLIC;

-- Ship the rows of a table or view past a stored cursor (the bulk ingestion
-- guide, inside the database); typically scheduled with pg_cron.
CREATE FUNCTION @extschema@.monk_batch_export(
    source      regclass,
    batch_size  integer DEFAULT NULL,
    max_events  bigint  DEFAULT NULL,
    cursor_name text    DEFAULT NULL)
RETURNS TABLE (batches integer, events_sent bigint, events_failed bigint, last_id bigint, elapsed interval)
AS 'MODULE_PATHNAME', 'monk_batch_export'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.monk_batch_export(regclass, integer, bigint, text)
    IS 'send the rows of a table or view with id past the stored cursor to the Events API';
REVOKE ALL ON FUNCTION @extschema@.monk_batch_export(regclass, integer, bigint, text) FROM PUBLIC;

-- Verify from SQL: the events the API lists (GET /v1/events, every page).
CREATE FUNCTION @extschema@.monk_list_events(
    customer_id          text        DEFAULT NULL,
    external_customer_id text        DEFAULT NULL,
    start                timestamptz DEFAULT NULL,
    "end"                timestamptz DEFAULT NULL,
    event_name           text        DEFAULT NULL)
RETURNS TABLE (event_name text, customer_id text, external_customer_id text,
               "timestamp" timestamptz, properties jsonb, idempotency_key text)
AS 'MODULE_PATHNAME', 'monk_list_events'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.monk_list_events(text, text, timestamptz, timestamptz, text)
    IS 'the events the Events API lists for these filters (start inclusive, end exclusive), every page';
REVOKE ALL ON FUNCTION @extschema@.monk_list_events(text, text, timestamptz, timestamptz, text) FROM PUBLIC;

-- The aggregated usage cost (POST /v1/usage/cost), request and answer as jsonb.
CREATE FUNCTION @extschema@.monk_usage_cost(request jsonb)
RETURNS jsonb
AS 'MODULE_PATHNAME', 'monk_usage_cost'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.monk_usage_cost(jsonb)
    IS 'POST /v1/usage/cost with this body; returns the answer';
REVOKE ALL ON FUNCTION @extschema@.monk_usage_cost(jsonb) FROM PUBLIC;

-- The rows of an export source that the API does not list.
CREATE FUNCTION @extschema@.monk_verify_export(source regclass, since timestamptz DEFAULT NULL)
RETURNS TABLE (id bigint, idempotency_key text, event_name text, "timestamp" timestamptz, reason text)
AS 'MODULE_PATHNAME', 'monk_verify_export'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.monk_verify_export(regclass, timestamptz)
    IS 'rows of an export source (timestamp >= since) whose idempotency key the Events API does not list';
REVOKE ALL ON FUNCTION @extschema@.monk_verify_export(regclass, timestamptz) FROM PUBLIC;
