-- Validation: every rule of the Events API is checked when an event is
-- queued.  Each refusal carries SQLSTATE 22023, names the field, and leaves
-- the outbox and its id sequence untouched.  Statements run through try()
-- (init.sql).

CREATE TABLE before AS
    SELECT (SELECT count(*) FROM monk.outbox) AS queued,
           (SELECT last_value FROM monk.outbox_id_seq) AS last_id;

\x on
-- event_name
SELECT * FROM try($$SELECT monk_send(NULL, 'cus_1')$$);
SELECT * FROM try($$SELECT monk_send('', 'cus_1')$$);
-- customer
SELECT * FROM try($$SELECT monk_send('api_call')$$);
SELECT * FROM try($$SELECT monk_send('api_call', NULL, customer_id => NULL)$$);
SELECT * FROM try($$SELECT monk_send('api_call', '')$$);
SELECT * FROM try($$SELECT monk_send('api_call', '', customer_id => 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11')$$);
-- properties
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', '[1, 2]')$$);
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', '"tokens"')$$);
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', '42')$$);
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', '{"a": 1, "nested": {"b": 2}}')$$);
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', '{"list": [1, 2]}')$$);
-- numbers a JSON parser would change: refused rather than billed wrong
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', '{"big": 123456789012345678901234567890.123456789}')$$);
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', '{"u64max_plus_1": 18446744073709551616}')$$);
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', '{"huge": 1e400}')$$);
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', '{"tinier": 1e-400}')$$);
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', '{"precise": 0.10000000000000000000000001}')$$);
-- timestamp
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', event_time => '2999-01-01 00:00:00+00')$$);
SELECT code, message FROM try($$SELECT monk_send('api_call', 'cus_1', event_time => now() + interval '61 minutes')$$);
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', event_time => 'infinity')$$);
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', event_time => '-infinity')$$);
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', event_time => '0044-03-15 BC')$$);
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', event_time => '10000-01-01')$$);
-- idempotency key
SELECT * FROM try($$SELECT monk_send('api_call', 'cus_1', idempotency_key => '')$$);

-- The jsonb form: the API's field names, JSON types checked, unknown fields refused.
SELECT * FROM try($$SELECT monk_send(NULL::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('[]'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('"api_call"'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"externalCustomerId": "cus_1"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": null, "externalCustomerId": "cus_1"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": 7, "externalCustomerId": "cus_1"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "", "externalCustomerId": "cus_1"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": 12}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": ""}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "customerId": "cus_1"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "customerId": 5}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "customerId": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a1"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "properties": [1]}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "properties": "x"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "properties": {"a": {"b": 1}}}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "timestamp": 1700000000}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "timestamp": "yesterday"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "timestamp": "2026-03-06"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "timestamp": "2026-03-06T14:30:00"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "timestamp": "2026-02-30T14:30:00Z"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "timestamp": "2026-03-06T24:00:00Z"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "timestamp": "2026-03-06T14:30:00Zjunk"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "timestamp": "9999-12-31T23:00:00Z"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "idempotencyKey": ""}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "idempotencyKey": ["k"]}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "customer": "x"}'::jsonb)$$);
SELECT * FROM try($$SELECT monk_send('{"event_name": "api_call", "externalCustomerId": "cus_1"}'::jsonb)$$);
\x off

-- Nothing was queued, and no id was consumed.
SELECT (SELECT count(*) FROM monk.outbox) = queued AS outbox_unchanged,
       (SELECT last_value FROM monk.outbox_id_seq) = last_id AS sequence_unchanged
  FROM before;

-- Accepted at the edges: 59 minutes ahead, an old backfill, JSON nulls as absent.
SELECT monk_send('api_call', 'cus_1', event_time => now() + interval '59 minutes') IS NOT NULL AS queued;
SELECT monk_send('api_call', 'cus_1', event_time => '1999-12-31 23:59:59+00') IS NOT NULL AS queued;
SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "customerId": null, "properties": null, "timestamp": null, "idempotencyKey": null}'::jsonb) IS NOT NULL AS queued;
SELECT count(*) - (SELECT queued FROM before) AS newly_queued FROM monk.outbox;
DELETE FROM monk.outbox;
DROP TABLE before;

-- The calls people type: a JSON object without the cast is the jsonb form;
-- properties where the customer goes, or an object with more arguments, are
-- refused with what to write.
SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "idempotencyKey": "typed-1"}');
SELECT event::json->>'eventName' AS event_name, event::json->>'externalCustomerId' AS customer
  FROM monk.outbox WHERE idempotency_key = 'typed-1';
SELECT * FROM try($$SELECT monk_send('api_call', '{"tokens": 42}')$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call"}', 'cus_1')$$);
SELECT * FROM try($$SELECT monk_send('{"eventName": "api_call", "externalCustomerId": "cus_1", "nope": 1}')$$);
DELETE FROM monk.outbox;
