-- Idempotency keys: <prefix>outbox_<outbox id> (the prefix: sync_ and the
-- database's id, init.sql) unless the caller gives one
-- (never an exported row's default key, <prefix><id>); fixed when the event
-- is queued.
ALTER SEQUENCE monk.outbox_id_seq RESTART WITH 1000;
SELECT monk_send('api_call', 'cus_1') AS key;
SELECT monk_send('api_call', 'cus_1') AS key;
SELECT monk_send('api_call', 'cus_1', idempotency_key => 'order-42') AS key;
SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1"}'::jsonb) AS key;
SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "idempotencyKey": "order-43"}'::jsonb) AS key;

-- A per-database prefix keeps two outboxes sending to one account apart.
SET monk.idempotency_prefix = 'eu1_';
SELECT monk_send('api_call', 'cus_1') AS key;
RESET monk.idempotency_prefix;

-- The key in the column is the key in the JSON sent.
SELECT id, idempotency_key, event::json->>'idempotencyKey' AS sent_key
  FROM monk.outbox ORDER BY id;

-- A rolled-back event consumes an id but is never queued.
BEGIN;
SELECT monk_send('api_call', 'cus_1') AS key;
ROLLBACK;
SELECT count(*) FROM monk.outbox WHERE idempotency_key = 'sync_a1b2c3d4e5f60718_outbox_1006';
SELECT monk_send('api_call', 'cus_1') AS key;
DELETE FROM monk.outbox;
