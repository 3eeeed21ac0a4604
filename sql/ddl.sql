-- DDL that concerns monk: no DROP throws queued events away, and CREATE
-- EXTENSION warns where no worker would send the events.
SELECT monk_send('api_call', 'cus_1', idempotency_key => 'queued-at-drop');
\set VERBOSITY default
DROP EXTENSION monk;
DROP EXTENSION monk CASCADE;
DROP SCHEMA public CASCADE;
SELECT count(*) AS still_queued FROM monk.outbox;
-- discarding them explicitly, then dropping, works
DELETE FROM monk.outbox;
DROP EXTENSION monk;
CREATE EXTENSION monk;

-- a database that monk.databases does not list
CREATE DATABASE monk_unexported;
\c monk_unexported
CREATE EXTENSION monk;
-- no worker would send what it queues: a DROP says so, not "wait"
SELECT monk_send('api_call', 'cus_1', idempotency_key => 'unserved') AS key;
DROP EXTENSION monk;
\c contrib_regression
DROP DATABASE monk_unexported;
