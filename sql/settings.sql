-- Settings: defaults, bounds, contexts, the reserved prefix, the hidden key.
SELECT name, setting, unit, context, vartype, min_val, max_val
  FROM pg_settings WHERE name LIKE 'monk.%' ORDER BY name;

-- The API key is never shown, not even to a superuser.
SHOW monk.api_key;

-- Out-of-range and malformed values are refused, the old value kept.
ALTER SYSTEM SET monk.batch_size = 0;
ALTER SYSTEM SET monk.batch_size = 10001;
ALTER SYSTEM SET monk.max_parallel_requests = 0;
ALTER SYSTEM SET monk.retry_base_delay = -1;
ALTER SYSTEM SET monk.flush_interval = '-1s';
ALTER SYSTEM SET monk.request_timeout = '10ms';
ALTER SYSTEM SET monk.base_url = 'ftp://example.com';
ALTER SYSTEM SET monk.base_url = 'https://';
ALTER SYSTEM SET monk.base_url = 'https://example.com/x?y=1';
ALTER SYSTEM SET monk.base_url = 'example.com';
ALTER SYSTEM SET monk.databases = 'a,,b';
SHOW monk.batch_size;
SHOW monk.base_url;

-- Settings read by the worker change only through the configuration.
SET monk.batch_size = 10;
SET monk.base_url = 'http://example.com';
SET monk.api_key = 'k';

-- The idempotency prefix may be set per database or session by a superuser;
-- empty (the default) is sync_ and the database's id.
SET monk.idempotency_prefix = 'p1234567890123456789012345678901234567890123456789012345678901234';
SET monk.idempotency_prefix = E'a\tb';
SET monk.idempotency_prefix = 'db1_';
SHOW monk.idempotency_prefix;
RESET monk.idempotency_prefix;

-- The prefix monk. is reserved.
SET monk.no_such_setting = 1;

-- Files named by settings must be absolute and readable.
ALTER SYSTEM SET monk.api_key_file = 'relative/key';
ALTER SYSTEM SET monk.api_key_file = '/nonexistent/monk.key';
ALTER SYSTEM SET monk.ca_file = '/nonexistent/ca.pem';
ALTER SYSTEM SET monk.ca_file = 'ca.pem';
