/*
 * monk 0.2 -> 0.3: monk_capture, the trigger function that turns rows into
 * events.  Nothing queued is touched.
 */
\echo Use "ALTER EXTENSION monk UPDATE TO '0.3'" to load this file. \quit

-- The trigger function that turns rows into events (see the README's
-- "Capturing a table"); CREATE TRIGGER needs EXECUTE on it, firing does not.
CREATE FUNCTION @extschema@.monk_capture()
RETURNS trigger
AS 'MODULE_PATHNAME', 'monk_capture'
LANGUAGE C;
COMMENT ON FUNCTION @extschema@.monk_capture()
    IS 'trigger: queue each inserted or updated row as a usage event (arguments: event name, external_customer_id=, customer_id=, properties=, property.<name>=, constant.<name>=, timestamp=, key=)';
REVOKE ALL ON FUNCTION @extschema@.monk_capture() FROM PUBLIC;
