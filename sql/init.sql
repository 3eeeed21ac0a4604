-- The extension, and the helper the other tests run statements through: a
-- statement's SQLSTATE and message, or 00000 when it succeeds.
CREATE EXTENSION monk;
CREATE FUNCTION try(stmt text, OUT code text, OUT message text, OUT detail text, OUT hint text)
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE stmt;
    code := '00000';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                            detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
    -- the database clock changes from run to run
    detail := regexp_replace(detail, 'clock reads [0-9T:.-]+Z', 'clock reads <now>');
END $$;
