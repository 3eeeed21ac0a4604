-- monk_capture: rows become events through a trigger declared in one line.
-- The mapping (options, columns, types), the default key, corrections by
-- UPDATE, statement-level capture, and every mistake refused with its
-- SQLSTATE -- at CREATE TRIGGER where it can be known then.  Statements that
-- must fail run through try() (init.sql).
-- what was queued since the last look, oldest first (the transaction's
-- time, which events get when no timestamp column is mapped, as <now>)
CREATE TABLE seen (id bigint);
CREATE FUNCTION queued(OUT idempotency_key text, OUT event text) RETURNS SETOF record
LANGUAGE sql AS $$
    WITH new AS (SELECT o.id, o.idempotency_key, o.event FROM monk.outbox o
                  WHERE o.id > coalesce((SELECT max(id) FROM seen), 0)),
         mark AS (INSERT INTO seen SELECT max(id) FROM new WHERE EXISTS (SELECT FROM new))
    SELECT idempotency_key,
           regexp_replace(event, '"timestamp":"(?!2026-03-06)[^"]*"', '"timestamp":"<now>"')
      FROM new ORDER BY id
$$;
SELECT count(*) FROM queued();

-- the issue's row-level form
CREATE TABLE api_calls (
    id         bigserial PRIMARY KEY,
    customer   text,
    endpoint   text,
    tokens     int,
    created_at timestamptz NOT NULL DEFAULT '2026-03-06 14:30:00+00',
    note       text);
CREATE TRIGGER api_calls_monk AFTER INSERT OR UPDATE ON api_calls FOR EACH ROW
  EXECUTE FUNCTION monk_capture('api_call', 'external_customer_id=customer',
                                'properties=endpoint,tokens', 'timestamp=created_at');
INSERT INTO api_calls (customer, endpoint, tokens) VALUES ('cus_1', '/v1/chat', 42), ('cus_2', NULL, 7);
SELECT * FROM queued();
-- an UPDATE of a mapped column is a correction (same key); of nothing mapped, nothing
UPDATE api_calls SET note = 'reviewed';
SELECT * FROM queued();
UPDATE api_calls SET tokens = 40 WHERE id = 1;
SELECT * FROM queued();
-- a rolled-back row queues nothing
BEGIN;
INSERT INTO api_calls (customer, tokens) VALUES ('cus_3', 1);
ROLLBACK;
SELECT * FROM queued();
-- the prefix is read when the row is captured
SET monk.idempotency_prefix = 'eu1_';
INSERT INTO api_calls (id, customer, tokens) VALUES (100, 'cus_1', 5);
RESET monk.idempotency_prefix;
SELECT * FROM queued();

\x on
-- rows that break a rule of the Events API: 22023, naming the column
SELECT * FROM try($$INSERT INTO api_calls (customer, tokens) VALUES (NULL, 1)$$);
SELECT * FROM try($$INSERT INTO api_calls (customer, tokens) VALUES ('', 1)$$);
SELECT * FROM try($$INSERT INTO api_calls (customer, created_at) VALUES ('cus_1', '9000-01-01 00:00:00+00')$$);
SELECT * FROM try($$INSERT INTO api_calls (customer, created_at) VALUES ('cus_1', 'infinity')$$);
-- the primary key, from which the default key comes, cannot change
SELECT * FROM try($$UPDATE api_calls SET id = 7 WHERE id = 1$$);
\x off
SELECT * FROM queued();

-- every kind of column, renamed and constant properties, JSON nulls dropped
CREATE TYPE tier AS ENUM ('free', 'pro');
CREATE TABLE usage (
    id       int PRIMARY KEY,
    cust     uuid,
    ext      bigint,
    at       timestamp,
    day      date,
    n2       smallint,
    f4       real,
    f8       double precision,
    num      numeric,
    flag     boolean,
    doc      jsonb,
    legacy   json,
    level    tier,
    seen_at  timestamptz,
    label    varchar(10),
    code     char(3));
SET TimeZone = 'UTC';
CREATE TRIGGER usage_monk AFTER INSERT ON usage FOR EACH ROW
  EXECUTE FUNCTION monk_capture('usage', 'customer_id=cust', 'external_customer_id = ext', 'timestamp=at',
                                'properties= day, n2 ,f4,f8,num,flag,doc,legacy,level,seen_at,label,code',
                                'property.dollars=num', 'constant.region=eu-1');
INSERT INTO usage VALUES (1, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 9007199254740993, '2026-03-06 14:30:00.25',
                          '2026-03-06', -3, 1.1, 0.1, 12.50, true, '"text"', '3.5', 'pro',
                          '2026-03-06 15:00:00+01', 'short', 'ab');
INSERT INTO usage (id, ext, doc, legacy) VALUES (2, 7, 'null', 'false');
SELECT * FROM queued();
\x on
SELECT * FROM try($$INSERT INTO usage (id, ext, doc) VALUES (3, 1, '{"a": 1}')$$);
SELECT * FROM try($$INSERT INTO usage (id, ext, doc) VALUES (3, 1, '[1]')$$);
SELECT * FROM try($$INSERT INTO usage (id, ext, num) VALUES (3, 1, 'NaN')$$);
SELECT * FROM try($$INSERT INTO usage (id, ext, num) VALUES (3, 1, 123456789012345678901234567890.5)$$);
SELECT * FROM try($$INSERT INTO usage (id, ext, f8) VALUES (3, 1, 'Infinity')$$);
SELECT * FROM try($$INSERT INTO usage (id, ext, seen_at) VALUES (3, 1, '-infinity')$$);
\x off
RESET TimeZone;

-- key=<column>, and the default key of a composite primary key (',' ':' '\' escaped)
CREATE TABLE orders (region text, no text, customer text, ref text, PRIMARY KEY (region, no));
CREATE TRIGGER orders_monk AFTER INSERT ON orders FOR EACH ROW
  EXECUTE FUNCTION monk_capture('order', 'external_customer_id=customer');
CREATE TRIGGER orders_monk_ref AFTER INSERT ON orders FOR EACH ROW
  EXECUTE FUNCTION monk_capture('order_ref', 'external_customer_id=customer', 'key=ref');
INSERT INTO orders VALUES ('a,b', 'c', 'cus_1', 'ref-1'), ('a', 'b,c', 'cus_1', 'ref-2'), ('x:y\z', '1', 'cus_1', 'ref-3');
SELECT * FROM queued();
\x on
SELECT * FROM try($$INSERT INTO orders VALUES ('n', 'n', 'cus_1', NULL)$$);
\x off

-- a partitioned table: the default key would change when a row moves to
-- another partition (it holds the partition key), so key=<column> is
-- required, on the table and on a partition; a move is then a correction
CREATE TABLE metered (id int, region text, customer text, units int, PRIMARY KEY (id, region),
                      event_key text GENERATED ALWAYS AS ('sync_metered_' || id) STORED)
  PARTITION BY LIST (region);
CREATE TABLE metered_eu PARTITION OF metered FOR VALUES IN ('eu');
CREATE TABLE metered_us PARTITION OF metered FOR VALUES IN ('us');
\x on
SELECT * FROM try($$CREATE TRIGGER metered_monk AFTER INSERT OR UPDATE ON metered FOR EACH ROW
  EXECUTE FUNCTION monk_capture('metered', 'external_customer_id=customer', 'properties=units')$$);
SELECT * FROM try($$CREATE TRIGGER metered_monk AFTER INSERT ON metered_eu FOR EACH ROW
  EXECUTE FUNCTION monk_capture('metered', 'external_customer_id=customer')$$);
SELECT * FROM try($$CREATE TRIGGER metered_monk AFTER INSERT ON metered REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION monk_capture('metered', 'external_customer_id=customer')$$);
\x off
CREATE TRIGGER metered_monk AFTER INSERT OR UPDATE ON metered FOR EACH ROW
  EXECUTE FUNCTION monk_capture('metered', 'external_customer_id=customer', 'properties=units', 'key=event_key');
INSERT INTO metered VALUES (1, 'eu', 'cus_1', 10);
INSERT INTO metered_us VALUES (2, 'us', 'cus_2', 20);
UPDATE metered SET units = 11 WHERE id = 1;
-- a move from eu to us: the same key, the new data
UPDATE metered SET region = 'us', units = 12 WHERE id = 1;
SELECT * FROM queued();
-- a table with a capture trigger of its own and no key= cannot become a partition either
CREATE TABLE metered_ap (LIKE metered INCLUDING GENERATED, PRIMARY KEY (id, region));
CREATE TRIGGER metered_ap_monk AFTER INSERT ON metered_ap FOR EACH ROW
  EXECUTE FUNCTION monk_capture('metered', 'external_customer_id=customer');
\x on
SELECT * FROM try($$ALTER TABLE metered ATTACH PARTITION metered_ap FOR VALUES IN ('ap')$$);
\x off
DROP TABLE metered_ap;
-- at statement level, the root's transition tables show the move as an update
DROP TRIGGER metered_monk ON metered;
CREATE TRIGGER metered_monk_ins AFTER INSERT ON metered REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION monk_capture('metered', 'external_customer_id=customer', 'properties=units', 'key=event_key');
CREATE TRIGGER metered_monk_upd AFTER UPDATE ON metered REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION monk_capture('metered', 'external_customer_id=customer', 'properties=units', 'key=event_key');
UPDATE metered SET region = 'eu', units = 13 WHERE id = 1;
SELECT * FROM queued();

-- statement level: one pass over the transition table
CREATE TABLE bulk (id int PRIMARY KEY, customer text, tokens int);
CREATE TRIGGER bulk_monk AFTER INSERT ON bulk REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
  EXECUTE FUNCTION monk_capture('bulk_call', 'external_customer_id=customer', 'properties=tokens');
CREATE TRIGGER bulk_monk_update AFTER UPDATE ON bulk REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION monk_capture('bulk_call', 'external_customer_id=customer', 'properties=tokens');
INSERT INTO bulk SELECT i, 'cus_' || i, i FROM generate_series(1, 4) i;
SELECT * FROM queued();
-- only the rows whose event changes are queued again
UPDATE bulk SET tokens = tokens + id % 2;
SELECT * FROM queued();
INSERT INTO bulk SELECT 10, 'cus_10', 1 WHERE false;
SELECT count(*) AS nothing FROM queued();
\x on
SELECT * FROM try($$UPDATE bulk SET id = id + 100 WHERE id = 1$$);
SELECT * FROM try($$INSERT INTO bulk VALUES (5, 'cus_5', 1), (6, NULL, 1)$$);
\x off
SELECT count(*) AS nothing FROM queued();

-- the mapping follows the table: a dropped column, a changed type, a replaced trigger
CREATE TABLE evolving (id int PRIMARY KEY, customer text, tokens int, extra int);
CREATE TRIGGER evolving_monk AFTER INSERT ON evolving FOR EACH ROW
  EXECUTE FUNCTION monk_capture('evolving', 'external_customer_id=customer', 'properties=tokens');
INSERT INTO evolving VALUES (1, 'cus_1', 1, 0);
ALTER TABLE evolving ALTER COLUMN tokens TYPE numeric;
INSERT INTO evolving VALUES (2, 'cus_1', 2.5, 0);
CREATE OR REPLACE TRIGGER evolving_monk AFTER INSERT ON evolving FOR EACH ROW
  EXECUTE FUNCTION monk_capture('evolving', 'external_customer_id=customer', 'properties=tokens,extra');
INSERT INTO evolving VALUES (3, 'cus_1', 3, 9);
SELECT * FROM queued();
ALTER TABLE evolving DROP COLUMN extra;
\x on
SELECT * FROM try($$INSERT INTO evolving VALUES (4, 'cus_1', 4)$$);
\x off

-- mistakes in CREATE TRIGGER are refused there, with their SQLSTATE
\x on
SELECT * FROM try($$CREATE TRIGGER t AFTER DELETE ON api_calls FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer')$$);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT OR DELETE ON api_calls FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer')$$);
SELECT * FROM try($$CREATE TRIGGER t AFTER TRUNCATE ON api_calls FOR EACH STATEMENT EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer')$$);
SELECT * FROM try($$CREATE TRIGGER t BEFORE INSERT ON api_calls FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer')$$);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON api_calls FOR EACH STATEMENT EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer')$$);
SELECT * FROM try($$CREATE TRIGGER t AFTER UPDATE ON bulk REFERENCING NEW TABLE AS n FOR EACH STATEMENT EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer')$$);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON api_calls FOR EACH ROW EXECUTE FUNCTION monk_capture()$$);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON api_calls FOR EACH ROW EXECUTE FUNCTION monk_capture('external_customer_id=customer')$$);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON api_calls FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'properties=tokens')$$);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON api_calls FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id=Customer')$$);
-- the hint says what to write; a name in double quotes, as SQL writes it, works too
CREATE TABLE mixed_case (id int PRIMARY KEY, "customerId" text);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON mixed_case FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customerid')$$);
CREATE TRIGGER t AFTER INSERT ON mixed_case FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id="customerId"');
INSERT INTO mixed_case VALUES (1, 'cus_quoted');
SELECT event::json->>'externalCustomerId' AS customer FROM monk.outbox WHERE idempotency_key LIKE '%mixed_case:1:e';
DROP TABLE mixed_case;
DELETE FROM monk.outbox;
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON api_calls FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer', 'properties=tokens,nope')$$);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON api_calls FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'customer_id=customer')$$);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON api_calls FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer', 'timestamp=note')$$);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON api_calls FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer', 'customer')$$);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON api_calls FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer', 'tokens=tokens')$$);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON api_calls FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer', 'external_customer_id=note')$$);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON api_calls FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer', 'properties=tokens', 'property.tokens=id')$$);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON api_calls FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer', 'properties=tokens,')$$);
CREATE TABLE tagged (id int PRIMARY KEY, customer text, tags text[]);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON tagged FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer', 'properties=tags')$$);
CREATE TABLE nokey (customer text);
SELECT * FROM try($$CREATE TRIGGER t AFTER INSERT ON nokey FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer')$$);
CREATE VIEW api_calls_view AS SELECT * FROM api_calls;
SELECT * FROM try($$CREATE TRIGGER t INSTEAD OF INSERT ON api_calls_view FOR EACH ROW EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer')$$);
\x off
-- with key=, a table without a primary key is fine
CREATE TRIGGER nokey_monk AFTER INSERT ON nokey FOR EACH ROW
  EXECUTE FUNCTION monk_capture('e', 'external_customer_id=customer', 'key=customer');
SELECT count(*) AS refused_triggers FROM pg_trigger WHERE tgname = 't';

-- privileges: the table's owner needs EXECUTE on monk_capture to create the
-- trigger; a role that may insert into the table needs nothing of monk
CREATE ROLE monk_owner;
CREATE ROLE monk_writer;
CREATE TABLE owned (id int PRIMARY KEY, customer text);
ALTER TABLE owned OWNER TO monk_owner;
GRANT INSERT ON owned TO monk_writer;
SET ROLE monk_owner;
\x on
SELECT * FROM try($$CREATE TRIGGER owned_monk AFTER INSERT ON owned FOR EACH ROW EXECUTE FUNCTION monk_capture('owned', 'external_customer_id=customer')$$);
\x off
RESET ROLE;
GRANT EXECUTE ON FUNCTION monk_capture() TO monk_owner;
SET ROLE monk_owner;
CREATE TRIGGER owned_monk AFTER INSERT ON owned FOR EACH ROW
  EXECUTE FUNCTION monk_capture('owned', 'external_customer_id=customer');
SET ROLE monk_writer;
INSERT INTO owned VALUES (1, 'cus_w');
SELECT has_schema_privilege('monk', 'USAGE') AS writer_uses_monk;
RESET ROLE;
SELECT * FROM queued();

-- clean up: the ddl test drops the extension, which these triggers depend on
DROP TABLE api_calls, usage, orders, metered, bulk, evolving, tagged, nokey, owned CASCADE;
DROP TYPE tier;
REVOKE EXECUTE ON FUNCTION monk_capture() FROM monk_owner;
DROP ROLE monk_owner;
DROP ROLE monk_writer;
DELETE FROM monk.outbox;
DROP FUNCTION queued();
DROP TABLE seen;
