-- Rendering: the exact JSON the worker sends for an event.
SET timezone = 'America/New_York';

-- camelCase fields, UTC timestamps with Z, key last but properties.
SELECT monk.event_json('api_call', 'cus_1', '{"tokens": 42}', '2026-03-06 09:30:00-05', 'k1');
SELECT monk.event_json('api_call', customer_id => 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
                       event_time => '2026-03-06 14:30:00.123+00');
SELECT monk.event_json('api_call', 'cus_1', NULL, '2026-03-06 14:30:00.000001+00');
-- both customer fields are sent when both are given
SELECT monk.event_json('api_call', 'cus_1', NULL, '2026-03-06 14:30:00+00', 'k',
                       'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11');

-- Numbers are sent exactly as written (jsonb's canonical form of the same
-- value), at the edges of what JSON parsers hold exactly: 64-bit integers,
-- and numbers that survive a double-precision round trip.
SELECT monk.event_json('n', 'c', '{"i": 9223372036854775808, "d": 0.1, "e": 1.5e3, "neg": -0.000001}',
                       '2026-01-01 00:00:00+00');
SELECT monk.event_json('n', 'c', '{"u64max": 18446744073709551615, "i64min": -9223372036854775808, "zero": -0}',
                       '2026-01-01 00:00:00+00');
SELECT monk.event_json('n', 'c', '{"dblmax": 1.7976931348623157e308, "tiny": 5e-324, "third": 0.3333333333333333}',
                       '2026-01-01 00:00:00+00')::jsonb->'properties' = '{"dblmax": 1.7976931348623157e308, "tiny": 5e-324, "third": 0.3333333333333333}' AS exact;
-- Booleans and strings; JSON null values are dropped.
SELECT monk.event_json('n', 'c', '{"t": true, "f": false, "s": "x", "gone": null}', '2026-01-01 00:00:00+00');
SELECT monk.event_json('n', 'c', '{"gone": null}', '2026-01-01 00:00:00+00');

-- Strings are escaped for JSON; UTF-8 passes through unchanged.
SELECT monk.event_json(E'quote " backslash \\ tab \t nl \n cr \r bell \u0007', E'\u00e9\u4e2d\U0001F600',
                       jsonb_build_object(E'k\u0001"', E'v\\\b\f'), '2026-01-01 00:00:00+00', E'key/\u2028');
-- What the API would parse is what was given.
SELECT (monk.event_json(E'a"b\\c\u0001', E'\U0001F600', '{"p": "\\u0000x"}'::jsonb - 'p' || jsonb_build_object('p', E'\u00ff\n'),
                        '2026-01-01 00:00:00+00')::jsonb)
       = jsonb_build_object('eventName', E'a"b\\c\u0001', 'externalCustomerId', E'\U0001F600',
                            'timestamp', '2026-01-01T00:00:00Z', 'properties', jsonb_build_object('p', E'\u00ff\n')) AS round_trips;

-- The jsonb form renders the same event the same way.
SELECT monk.event_json('{"eventName": "api_call", "externalCustomerId": "cus_1", "properties": {"tokens": 42},
                         "timestamp": "2026-03-06T09:30:00-05:00", "idempotencyKey": "k1"}'::jsonb)::text
     = monk.event_json('api_call', 'cus_1', '{"tokens": 42}', '2026-03-06 09:30:00-05', 'k1')::text AS same;
SELECT monk.event_json('{"eventName": "e", "customerId": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11", "timestamp": "2026-03-06T14:30:00.5+0130"}'::jsonb);
SELECT monk.event_json('{"eventName": "e", "externalCustomerId": "c", "timestamp": "2026-03-06t14:30z"}'::jsonb);
SELECT monk.event_json('{"eventName": "e", "externalCustomerId": "c", "timestamp": "2024-02-29T23:59:59.9999999Z"}'::jsonb);

-- What monk_send queues is what monk.event_json renders.
SELECT monk_send('api_call', 'cus_1', '{"tokens": 42}', '2026-03-06 09:30:00-05', 'k-render') AS key;
SELECT event = monk.event_json('api_call', 'cus_1', '{"tokens": 42}', '2026-03-06 09:30:00-05', 'k-render')::text AS same
  FROM monk.outbox WHERE idempotency_key = 'k-render';
SELECT idempotency_key, event FROM monk.outbox_events WHERE idempotency_key = 'k-render';
-- Without an event time, the transaction's time is sent.
BEGIN;
SELECT monk_send('api_call', 'cus_1', idempotency_key => 'k-now') AS key;
SELECT (event::json->>'timestamp')::timestamptz = now() AS timestamp_is_now
  FROM monk.outbox WHERE idempotency_key = 'k-now';
COMMIT;
DELETE FROM monk.outbox;
RESET timezone;
