-- Robustness: every SQL-callable function of monk, called with NULLs, empty
-- strings, infinite times, out-of-range numbers and huge strings, fails (if
-- it fails) with a SQLSTATE of its own: never XX000 (internal_error).  No
-- call reaches the network: those that would are left out.
CREATE TABLE empty_source (id bigint, event_name text, external_customer_id text,
                           "timestamp" timestamptz, properties jsonb, idempotency_key text);
CREATE TABLE huge AS SELECT repeat('x', 1000000) AS s;

CREATE TABLE calls (stmt text);
-- monk_send and monk.event_json, argument by argument
INSERT INTO calls
SELECT format('SELECT %s(%s)', f, a)
  FROM unnest(ARRAY['monk_send', 'monk.event_json']) AS f,
       unnest(ARRAY[
         'NULL::text', $$''$$, $$'e', NULL$$, $$'e', ''$$, $$(SELECT s FROM huge), 'c'$$,
         $$'e', (SELECT s FROM huge)$$, $$'e', 'c', NULL::jsonb$$, $$'e', 'c', '[]'$$, $$'e', 'c', '"s"'$$,
         $$'e', 'c', 'null'$$, $$'e', 'c', '{"a": {"b": 1}}'$$, $$'e', 'c', '{"a": [1]}'$$,
         $$'e', 'c', '{"n": 1e400}'$$, $$'e', 'c', '{"n": -1e-400}'$$, $$'e', 'c', '{"": 1}'$$,
         $$'e', 'c', event_time => 'infinity'$$, $$'e', 'c', event_time => '-infinity'$$,
         $$'e', 'c', event_time => '294276-12-31 23:59:59+00'$$, $$'e', 'c', event_time => '4713-01-01 00:00:00+00 BC'$$,
         $$'e', 'c', idempotency_key => ''$$, $$'e', 'c', idempotency_key => (SELECT s FROM huge)$$,
         $$'e', customer_id => '00000000-0000-0000-0000-000000000000'$$,
         'NULL::jsonb', $$'{}'::jsonb$$, $$'[]'::jsonb$$, $$'null'::jsonb$$, $$'"e"'::jsonb$$,
         $${"eventName": 1}$$ || '::jsonb',
         $$'{"eventName": "e", "externalCustomerId": "c", "timestamp": "infinity"}'::jsonb$$,
         $$'{"eventName": "e", "externalCustomerId": "c", "timestamp": "294277-01-01T00:00:00Z"}'::jsonb$$,
         $$'{"eventName": "e", "externalCustomerId": "c", "timestamp": "0000-01-01T00:00:00Z"}'::jsonb$$,
         $$'{"eventName": "e", "customerId": "not-a-uuid"}'::jsonb$$,
         $$'{"eventName": "e", "externalCustomerId": "c", "properties": {"n": 1e1000}}'::jsonb$$,
         $$'{"eventName": "e", "externalCustomerId": "c", "unknown": 1}'::jsonb$$]) AS a;
-- monk_batch_export on a source with no rows (nothing reaches the network)
INSERT INTO calls VALUES
  ($$SELECT * FROM monk_batch_export(NULL)$$),
  ($$SELECT * FROM monk_batch_export('pg_class')$$),
  ($$SELECT * FROM monk_batch_export('empty_source', 0)$$),
  ($$SELECT * FROM monk_batch_export('empty_source', -2147483648)$$),
  ($$SELECT * FROM monk_batch_export('empty_source', 2147483647)$$),
  ($$SELECT * FROM monk_batch_export('empty_source', max_events => 0)$$),
  ($$SELECT * FROM monk_batch_export('empty_source', max_events => -9223372036854775808)$$),
  ($$SELECT * FROM monk_batch_export('empty_source', max_events => 9223372036854775807)$$),
  ($$SELECT * FROM monk_batch_export('empty_source', cursor_name => '')$$),
  ($$SELECT * FROM monk_batch_export('empty_source', cursor_name => (SELECT s FROM huge))$$),
  ($$SELECT * FROM monk_batch_export('empty_source')$$);
-- verification: only what fails before a request
INSERT INTO calls VALUES
  ($$SELECT * FROM monk_list_events(start => 'infinity')$$),
  ($$SELECT * FROM monk_list_events(start => '-infinity')$$),
  ($$SELECT * FROM monk_list_events("end" => 'infinity')$$),
  ($$SELECT * FROM monk_list_events("end" => '-infinity')$$),
  ($$SELECT * FROM monk_list_events(start => '4713-01-01 00:00:00+00 BC')$$),
  ($$SELECT * FROM monk_list_events(start => '2026-03-16', "end" => '2026-03-15')$$),
  ($$SELECT * FROM monk_usage_cost(NULL)$$),
  ($$SELECT * FROM monk_verify_export(NULL)$$),
  ($$SELECT * FROM monk_verify_export('pg_class')$$),
  ($$SELECT * FROM monk_verify_export('empty_source', 'infinity')$$),
  ($$SELECT * FROM monk_verify_export('empty_source', '-infinity')$$);
-- the rest
INSERT INTO calls VALUES
  ($$SELECT monk_retry_dead_letters(NULL)$$),
  ($$SELECT monk_retry_dead_letters('{}')$$),
  ($$SELECT monk_retry_dead_letters('{-1, 9223372036854775807, NULL}')$$),
  ($$SELECT * FROM monk.worker_status()$$),
  ($$SELECT monk.wake_worker()$$),
  ($$SELECT monk.requeue(NULL, NULL, NULL, NULL)$$),
  ($$SELECT monk.requeue(-9223372036854775808, '', '', 'infinity')$$),
  ($$SELECT monk.requeue(1, (SELECT s FROM huge), (SELECT s FROM huge), '-infinity')$$);

CREATE TABLE results AS SELECT stmt, (try(stmt)).code AS code FROM calls;
SELECT count(*) > 70 AS many_calls, count(*) FILTER (WHERE code = 'XX000') AS internal_errors FROM results;
-- (none expected)
SELECT left(stmt, 120) AS stmt FROM results WHERE code = 'XX000' ORDER BY 1;
-- the infinite times are refused as out of range
SELECT left(stmt, 70) AS stmt, code FROM results WHERE stmt LIKE '%infinity''%' AND stmt NOT LIKE '%monk_send%'
   AND stmt NOT LIKE '%event_json%' AND stmt NOT LIKE '%requeue%' ORDER BY 1;

DELETE FROM monk.outbox;
DROP TABLE results, calls, huge, empty_source;
