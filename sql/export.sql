-- monk_batch_export: misuse is refused with a clear error before anything is
-- sent or stored.
\set VERBOSITY default
CREATE TABLE src_ok (id bigint PRIMARY KEY, external_customer_id text, event_name text);
CREATE TABLE src_no_id (key bigint, external_customer_id text, event_name text);
CREATE TABLE src_text_id (id text, external_customer_id text, event_name text);
CREATE TABLE src_no_customer (id bigint, event_name text);
CREATE TABLE src_no_name (id bigint, customer_id uuid);
CREATE TABLE src_local_time (id bigint, external_customer_id text, event_name text, "timestamp" timestamp);
CREATE TABLE src_bad_props (id bigint, external_customer_id text, event_name text, properties text);
CREATE SEQUENCE src_seq;

SELECT * FROM monk_batch_export(NULL);
SELECT * FROM monk_batch_export('no_such_table');
SELECT * FROM monk_batch_export('src_seq');
SELECT * FROM monk_batch_export('src_no_id');
SELECT * FROM monk_batch_export('src_text_id');
SELECT * FROM monk_batch_export('src_no_customer');
SELECT * FROM monk_batch_export('src_no_name');
SELECT * FROM monk_batch_export('src_local_time');
SELECT * FROM monk_batch_export('src_bad_props');
SELECT * FROM monk_batch_export('src_ok', 0);
SELECT * FROM monk_batch_export('src_ok', 10001);
SELECT * FROM monk_batch_export('src_ok', max_events => 0);
SELECT * FROM monk_batch_export('src_ok', cursor_name => '');
SELECT * FROM monk_batch_export('src_ok', cursor_name => 'outbox');

-- nothing past the cursor: nothing is sent, the cursor is created
SELECT batches, events_sent, events_failed, last_id FROM monk_batch_export('src_ok');
SELECT cursor_name, source, last_id FROM monk.sync_state;

-- privileges: EXECUTE is not granted to PUBLIC; with it, the caller still
-- needs SELECT on the source
CREATE ROLE monk_exporter;
SET ROLE monk_exporter;
SELECT * FROM monk_batch_export('src_ok');
RESET ROLE;
GRANT EXECUTE ON FUNCTION monk_batch_export(regclass, integer, bigint, text) TO monk_exporter;
SET ROLE monk_exporter;
SELECT * FROM monk_batch_export('src_ok');
RESET ROLE;
GRANT SELECT ON src_ok TO monk_exporter;
SET ROLE monk_exporter;
SELECT batches, events_sent, events_failed, last_id FROM monk_batch_export('src_ok', cursor_name => 'exporter');
SELECT * FROM monk.sync_state;
RESET ROLE;
SELECT cursor_name, last_id FROM monk.sync_state ORDER BY cursor_name;

DELETE FROM monk.sync_state;
REVOKE ALL ON FUNCTION monk_batch_export(regclass, integer, bigint, text) FROM monk_exporter;
REVOKE ALL ON src_ok FROM monk_exporter;
DROP ROLE monk_exporter;
DROP TABLE src_ok, src_no_id, src_text_id, src_no_customer, src_no_name, src_local_time, src_bad_props;
DROP SEQUENCE src_seq;
