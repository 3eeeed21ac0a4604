-- Privileges: EXECUTE on monk_send is all a role needs to queue events, and
-- it gives nothing else: no access to the tables, the settings or the key.
CREATE ROLE monk_app LOGIN;
CREATE ROLE monk_nobody LOGIN;
GRANT EXECUTE ON FUNCTION monk_send(text, text, jsonb, timestamptz, text, uuid) TO monk_app;
GRANT EXECUTE ON FUNCTION monk_send(jsonb) TO monk_app;

-- Nothing of monk is granted to PUBLIC: not the schema, not monk_send.
SELECT p.oid::regprocedure AS function,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_may_execute,
       has_function_privilege('monk_app', p.oid, 'EXECUTE') AS app_may_execute
  FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.classid = 'pg_proc'::regclass
 WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'monk') ORDER BY p.oid::regprocedure::text COLLATE "C";
SELECT has_schema_privilege('public', 'monk', 'USAGE') AS public_uses_schema,
       has_schema_privilege('monk_app', 'monk', 'USAGE') AS app_uses_schema;
SELECT c.oid::regclass AS relation,
       has_table_privilege('monk_app', c.oid, 'SELECT,INSERT,UPDATE,DELETE,TRUNCATE') AS app_has_any
  FROM pg_class c WHERE c.relnamespace = 'monk'::regnamespace AND c.relkind IN ('r', 'v') ORDER BY c.relname COLLATE "C";

SET ROLE monk_app;
SELECT monk_send('api_call', 'cus_app', idempotency_key => 'from-app');
SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_app", "idempotencyKey": "from-app-2"}'::jsonb);
SELECT * FROM monk.outbox;
SELECT * FROM monk.dead_letter;
SELECT * FROM monk.status;
DELETE FROM monk.outbox;
SELECT monk.event_json('api_call', 'cus_1');
SHOW monk.api_key;
SHOW monk.base_url;
SELECT current_setting('monk.api_key');
SELECT count(*) FROM pg_settings WHERE name IN ('monk.api_key', 'monk.base_url', 'monk.databases');
SET monk.idempotency_prefix = 'mine_';
SET monk.base_url = 'http://attacker.example';
RESET ROLE;

-- A member of pg_monitor reads monk.status, and nothing else of monk.
CREATE ROLE monk_watcher IN ROLE pg_monitor;
SET ROLE monk_watcher;
SELECT database, outbox_depth FROM monk.status;
SELECT * FROM monk.outbox;
SELECT * FROM monk.dead_letter;
RESET ROLE;
DROP ROLE monk_watcher;

-- A role without the grant cannot queue events.
SET ROLE monk_nobody;
SELECT monk_send('api_call', 'cus_x');
RESET ROLE;

-- The events queued by monk_app are there.
SELECT idempotency_key FROM monk.outbox ORDER BY id;
DELETE FROM monk.outbox;

-- Read-only transactions cannot queue.
BEGIN READ ONLY;
SELECT monk_send('api_call', 'cus_1');
ROLLBACK;

REVOKE ALL ON FUNCTION monk_send(text, text, jsonb, timestamptz, text, uuid) FROM monk_app;
REVOKE ALL ON FUNCTION monk_send(jsonb) FROM monk_app;
DROP ROLE monk_app;
DROP ROLE monk_nobody;
