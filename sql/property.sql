-- A property test of validation and rendering (the fuzz target of the
-- suite): thousands of random events, with strings drawn from every plane of
-- Unicode including control characters, quotes and backslashes, random
-- properties and timestamps, each rendered by monk.event_json and parsed
-- back: what the API would read is exactly what was given.
SELECT setseed(0.4242);

CREATE FUNCTION pg_temp.rnd_char() RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT chr(CASE floor(random() * 6)::int
                   WHEN 0 THEN 1 + floor(random() * 31)::int           -- control characters
                   WHEN 1 THEN (ARRAY[34, 92, 47, 39, 127])[1 + floor(random() * 5)::int]  -- " \ / ' DEL
                   WHEN 2 THEN 32 + floor(random() * 95)::int           -- printable ASCII
                   WHEN 3 THEN 128 + floor(random() * (55295 - 128))::int   -- BMP below the surrogates
                   WHEN 4 THEN 57344 + floor(random() * (65535 - 57344))::int -- BMP above them
                   ELSE 65536 + floor(random() * (1114111 - 65536))::int END) -- planes 1 to 16
$$;
CREATE FUNCTION pg_temp.rnd_string(minlen int, maxlen int) RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(string_agg(pg_temp.rnd_char(), ''), '')
      FROM generate_series(1, minlen + floor(random() * (maxlen - minlen + 1))::int)
$$;
CREATE FUNCTION pg_temp.rnd_value() RETURNS jsonb LANGUAGE sql VOLATILE AS $$
    SELECT CASE floor(random() * 6)::int
               WHEN 0 THEN to_jsonb(pg_temp.rnd_string(0, 40))
               WHEN 1 THEN to_jsonb(floor((random() - 0.5) * 2e18)::bigint)
               WHEN 2 THEN to_jsonb((random() - 0.5) * 10 ^ floor(random() * 40 - 20))
               WHEN 3 THEN to_jsonb(random() < 0.5)
               WHEN 4 THEN 'null'::jsonb
               ELSE to_jsonb(floor(random() * 1000)::int) END
$$;
CREATE FUNCTION pg_temp.rnd_props() RETURNS jsonb LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(jsonb_object_agg(pg_temp.rnd_string(0, 12), pg_temp.rnd_value()), '{}')
      FROM generate_series(1, floor(random() * 12)::int)
$$;

CREATE TEMP TABLE cases AS
    SELECT i,
           pg_temp.rnd_string(1, 30) AS name,
           CASE WHEN i % 3 = 0 THEN NULL ELSE pg_temp.rnd_string(1, 30) END AS cust,
           CASE WHEN i % 3 = 0 THEN gen_random_uuid() END AS cust_id,
           CASE WHEN i % 5 = 0 THEN NULL ELSE pg_temp.rnd_props() END AS props,
           timestamptz '1990-01-01 00:00:00+00' + random() * interval '36 years' AS ts,
           pg_temp.rnd_string(1, 40) AS key
      FROM generate_series(1, 4000) i;

-- both forms render every case; the JSON parses back to the same values
CREATE TEMP TABLE rendered AS
    SELECT c.*,
           monk.event_json(name, cust, props, ts, key, cust_id)::jsonb AS j,
           monk.event_json(jsonb_strip_nulls(jsonb_build_object(
               'eventName', name, 'externalCustomerId', cust, 'customerId', cust_id,
               'properties', props, 'timestamp', to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
               'idempotencyKey', key)))::text AS from_jsonb,
           monk.event_json(name, cust, props, ts, key, cust_id)::text AS from_args
      FROM cases c;

SELECT count(*) AS cases,
       count(*) FILTER (WHERE j->>'eventName' = name) AS names,
       count(*) FILTER (WHERE (j->>'externalCustomerId') IS NOT DISTINCT FROM cust) AS customers,
       count(*) FILTER (WHERE (j->>'customerId')::uuid IS NOT DISTINCT FROM cust_id) AS customer_ids,
       count(*) FILTER (WHERE j->>'idempotencyKey' = key) AS keys,
       count(*) FILTER (WHERE (j->>'timestamp')::timestamptz = ts AND j->>'timestamp' LIKE '%Z') AS timestamps,
       count(*) FILTER (WHERE (j->'properties') IS NOT DISTINCT FROM jsonb_strip_nulls(props)) AS properties,
       count(*) FILTER (WHERE from_jsonb = from_args) AS same_both_forms,
       count(*) FILTER (WHERE from_args !~ '[\x01-\x1f]') AS no_raw_controls
  FROM rendered;
