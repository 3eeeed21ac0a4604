/*
 * settings.c
 *		The monk.* configuration parameters: definitions, bounds, checks.
 *
 * Every setting of the specification is defined here with its bounds, unit
 * and context.  Settings that decide where events go or with which key
 * (base_url, api_key, databases) are superuser-only.  The API key gets
 * special care: its GUC variable never holds the key itself, only a fixed
 * placeholder, while the key lives in the check hook's "extra" data.  That
 * way SHOW, pg_settings, current_setting() and the postmaster's "parameter
 * changed" message on reload never see it.
 */
#include "postgres.h"

#include "common/hashfn.h"

#include <ctype.h>
#include <limits.h>
#include <unistd.h>

#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/varlena.h"

#include "compat.h"
#include "settings.h"
#include "standby.h"

static char *monk_base_url = NULL;	/* read through MonkBaseUrl() */
char	   *monk_databases = NULL;
int			monk_batch_size = 5000;
int			monk_flush_interval = 1000;
int			monk_max_parallel_requests = 4;
int			monk_request_timeout = 30000;
int			monk_max_retries = 10;
int			monk_retry_base_delay = 1000;
int			monk_retry_max_delay = 300000;
int			monk_circuit_failure_threshold = 5;
int			monk_circuit_open_time = 30000;
int			monk_shutdown_timeout = 10000;
char	   *monk_idempotency_prefix = NULL;
int			monk_max_outbox_events = 0;
int			monk_retention = 0;
int			monk_max_event_size = 1024; /* kB */
int			monk_max_request_size = 4096;	/* kB */
char	   *monk_test_wait_points = NULL;

/* The placeholder the monk.api_key variable always holds. */
#define API_KEY_PLACEHOLDER "(hidden)"

static char *api_key_guc = NULL;	/* always API_KEY_PLACEHOLDER */
static const char *api_key_value = "";	/* the real key, from the hook's extra */
static char *api_key_file = NULL;	/* monk.api_key_file: a path */
static const char *api_key_file_value = ""; /* the key read from it */
char	   *monk_ca_file = NULL;

#define MAX_KEY_LEN 4096

/*
 * Accept only http:// and https:// URLs with a host, without spaces, query or
 * fragment.  A trailing slash is tolerated (it is removed when paths are
 * appended).
 */
static bool
CheckBaseUrl(char **newval, void **extra, GucSource source)
{
	const char *url = *newval;
	const char *host;
	const char *p;

	if (url == NULL)
		return true;
	if (strncmp(url, "http://", 7) == 0)
		host = url + 7;
	else if (strncmp(url, "https://", 8) == 0)
		host = url + 8;
	else
	{
		GUC_check_errdetail("monk.base_url must start with \"http://\" or \"https://\".");
		return false;
	}
	if (*host == '\0' || *host == '/' || *host == ':')
	{
		GUC_check_errdetail("monk.base_url must name a host.");
		return false;
	}
	for (p = url; *p; p++)
	{
		if ((unsigned char) *p <= ' ' || *p == '?' || *p == '#' || *p == '"' ||
			*p == '\\' || (unsigned char) *p >= 0x7f)
		{
			GUC_check_errdetail("monk.base_url must not contain spaces, control characters, quotes, a query or a fragment.");
			return false;
		}
	}
	return true;
}

/*
 * Keep the key in "extra" and leave only the placeholder in the variable.
 */
static bool
CheckApiKey(char **newval, void **extra, GucSource source)
{
	const char *key = *newval ? *newval : "";
	char	   *copy;

	/* a value that already is the placeholder comes from GUC itself */
	if (strcmp(key, API_KEY_PLACEHOLDER) == 0)
		key = api_key_value;

	copy = MonkGucMalloc(strlen(key) + 1);
	if (copy == NULL)
		return false;
	strcpy(copy, key);
	*extra = copy;

	if (strcmp(*newval ? *newval : "", API_KEY_PLACEHOLDER) != 0)
	{
		char	   *placeholder = MonkGucMalloc(sizeof(API_KEY_PLACEHOLDER));

		if (placeholder == NULL)
			return false;
		strcpy(placeholder, API_KEY_PLACEHOLDER);
		MonkGucFree(*newval);
		*newval = placeholder;
	}
	return true;
}

static void
AssignApiKey(const char *newval, void *extra)
{
	api_key_value = extra ? (const char *) extra : "";
}

/* SHOW tells whether a key is set, never the key. */
static const char *
ShowApiKey(void)
{
	return api_key_value[0] ? "********" : "";
}

/*
 * monk.api_key_file: read the key from the file (at startup and at each
 * reload), so that it need not sit in postgresql.conf or postgresql.auto.conf.
 * Trailing white space (a final newline) is not part of the key.
 */
static bool
CheckApiKeyFile(char **newval, void **extra, GucSource source)
{
	const char *path = *newval ? *newval : "";
	char		buf[MAX_KEY_LEN + 2];
	size_t		n = 0;
	FILE	   *f;
	char	   *copy;

	if (path[0] != '\0')
	{
		if (!is_absolute_path(path))
		{
			GUC_check_errdetail("monk.api_key_file must be an absolute path.");
			return false;
		}
		f = fopen(path, "r");
		if (f == NULL)
		{
			GUC_check_errdetail("could not open monk.api_key_file \"%s\": %m", path);
			return false;
		}
		n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		if (n > MAX_KEY_LEN)
		{
			GUC_check_errdetail("monk.api_key_file \"%s\" is longer than %d bytes.", path, MAX_KEY_LEN);
			return false;
		}
		while (n > 0 && isspace((unsigned char) buf[n - 1]))
			n--;
		buf[n] = '\0';
		if (n == 0 || strlen(buf) != n)
		{
			GUC_check_errdetail("monk.api_key_file \"%s\" holds no key.", path);
			return false;
		}
	}
	buf[n] = '\0';
	copy = MonkGucMalloc(n + 1);
	if (copy == NULL)
		return false;
	memcpy(copy, buf, n + 1);
	explicit_bzero(buf, sizeof(buf));
	*extra = copy;
	return true;
}

static void
AssignApiKeyFile(const char *newval, void *extra)
{
	api_key_file_value = extra ? (const char *) extra : "";
}

/* monk.ca_file: a readable file, or empty for the system's CA bundle. */
static bool
CheckCaFile(char **newval, void **extra, GucSource source)
{
	const char *path = *newval ? *newval : "";

	if (path[0] == '\0')
		return true;
	if (!is_absolute_path(path))
	{
		GUC_check_errdetail("monk.ca_file must be an absolute path.");
		return false;
	}
	if (access(path, R_OK) != 0)
	{
		GUC_check_errdetail("could not read monk.ca_file \"%s\": %m", path);
		return false;
	}
	return true;
}

/* monk.databases: a comma-separated list of database names. */
static bool
CheckDatabases(char **newval, void **extra, GucSource source)
{
	char	   *raw = pstrdup(*newval ? *newval : "");
	List	   *names = NIL;
	bool		ok = SplitIdentifierString(raw, ',', &names);

	if (!ok)
		GUC_check_errdetail("monk.databases must be a comma-separated list of database names.");
	else if (list_length(names) > MONK_MAX_DATABASES)
	{
		GUC_check_errdetail("monk.databases names %d databases, more than the %d allowed.",
							list_length(names), MONK_MAX_DATABASES);
		ok = false;
	}
	list_free(names);
	pfree(raw);
	return ok;
}

/* monk.idempotency_prefix: printable; empty is the default (keys.c). */
static bool
CheckPrefix(char **newval, void **extra, GucSource source)
{
	const char *p = *newval ? *newval : "";

	if (strlen(p) > 64)
	{
		GUC_check_errdetail("monk.idempotency_prefix must be at most 64 bytes long.");
		return false;
	}
	for (; *p; p++)
	{
		if ((unsigned char) *p < ' ' || (unsigned char) *p == 0x7f)
		{
			GUC_check_errdetail("monk.idempotency_prefix must not contain control characters.");
			return false;
		}
	}
	return true;
}

/* The API key in force (monk.api_key_file's, else monk.api_key), or "". */
const char *
MonkApiKey(void)
{
	return api_key_file_value[0] ? api_key_file_value : api_key_value;
}

/* monk.base_url without its trailing slashes (palloc'd). */
char *
MonkBaseUrl(void)
{
	const char *base = monk_base_url ? monk_base_url : "";
	int			len = strlen(base);

	while (len > 0 && base[len - 1] == '/')
		len--;
	return pnstrdup(base, len);
}

/*
 * A hash of where events go and how: the base URL, the key in force and the
 * CA file.  A reload that changes it starts the sender afresh.
 */
uint64
MonkDestinationHash(void)
{
	char	   *url = MonkBaseUrl();
	const char *key = MonkApiKey();
	const char *ca = monk_ca_file ? monk_ca_file : "";
	uint64		h;

	h = hash_bytes_extended((const unsigned char *) url, strlen(url), 0);
	h = hash_bytes_extended((const unsigned char *) key, strlen(key), h);
	h = hash_bytes_extended((const unsigned char *) ca, strlen(ca), h);
	pfree(url);
	return h;
}

/*
 * The largest event monk queues or sends, in bytes: monk.max_event_size, and
 * never more than fits a request with its envelope.
 */
int
MonkMaxEventBytes(void)
{
	return (int) Min((int64) monk_max_event_size * 1024, (int64) monk_max_request_size * 1024 - 64);
}

/* The largest request body the worker sends, in bytes. */
int
MonkMaxRequestBytes(void)
{
	return (int) Min((int64) monk_max_request_size * 1024, (int64) MaxAllocSize);
}

/*
 * The names listed in monk.databases, parsed again when the setting changed
 * (on reload).  Neither the list nor its names may be modified, nor kept
 * past a reload.
 */
const List *
MonkDatabaseList(void)
{
	static List *names = NIL;
	static char *parsed = NULL; /* the value the list was parsed from */
	static char *raw = NULL;	/* what its names point into */
	const char *value = monk_databases ? monk_databases : "";

	if (parsed == NULL || strcmp(parsed, value) != 0)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		list_free(names);
		names = NIL;
		if (raw)
			pfree(raw);
		if (parsed)
			pfree(parsed);
		parsed = pstrdup(value);
		raw = pstrdup(value);
		if (!SplitIdentifierString(raw, ',', &names))
			elog(ERROR, "invalid monk.databases");
		MemoryContextSwitchTo(old);
	}
	return names;
}

/* Is database name listed in monk.databases? */
bool
MonkDatabaseListed(const char *name)
{
	ListCell   *lc;

	foreach(lc, MonkDatabaseList())
	{
		if (strcmp((const char *) lfirst(lc), name) == 0)
			return true;
	}
	return false;
}

/* Define every monk.* setting and reserve the prefix. */
void
MonkSettingsInit(void)
{
	DefineCustomStringVariable("monk.base_url",
							   "Base URL of the Monk Events API.",
							   "Events are sent to <base_url>/v1/events/batch. Only http and https URLs are accepted.",
							   &monk_base_url,
							   "https://events-api.monk.com",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   CheckBaseUrl, NULL, NULL);

	DefineCustomStringVariable("monk.api_key",
							   "API key sent as a Bearer token to the Monk Events API.",
							   "Never shown: SHOW and pg_settings display ******** when a key is set.",
							   &api_key_guc,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   CheckApiKey, AssignApiKey, ShowApiKey);

	DefineCustomIntVariable("monk.batch_size",
							"Maximum number of events in one request to the batch endpoint.",
							NULL,
							&monk_batch_size,
							5000, 1, MONK_MAX_BATCH_SIZE,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("monk.flush_interval",
							"Longest time a queued event waits for its batch to fill.",
							NULL,
							&monk_flush_interval,
							1000, 0, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("monk.max_parallel_requests",
							"Maximum number of batch requests in flight at once.",
							NULL,
							&monk_max_parallel_requests,
							4, 1, 64,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("monk.request_timeout",
							"Time allowed for one HTTP request, connection included.",
							NULL,
							&monk_request_timeout,
							30000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("monk.max_retries",
							"Retries of a failing batch before it is parked and tried again later.",
							NULL,
							&monk_max_retries,
							10, 0, 1000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("monk.retry_base_delay",
							"Base delay of the exponential backoff between retries.",
							NULL,
							&monk_retry_base_delay,
							1000, 1, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("monk.retry_max_delay",
							"Cap of the exponential backoff between retries.",
							NULL,
							&monk_retry_max_delay,
							300000, 1, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("monk.circuit_failure_threshold",
							"Consecutive failed requests that open the circuit breaker.",
							NULL,
							&monk_circuit_failure_threshold,
							5, 1, 100000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("monk.circuit_open_time",
							"Time the circuit breaker stays open before a probe request.",
							NULL,
							&monk_circuit_open_time,
							30000, 1, 24 * 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("monk.shutdown_timeout",
							"Time the worker waits for requests in flight when asked to stop.",
							NULL,
							&monk_shutdown_timeout,
							10000, 0, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomStringVariable("monk.standby_names",
							   "Standbys that must have flushed a transaction's commit before its events are sent.",
							   "In the form of synchronous_standby_names: FIRST n (...), ANY n (...), '*'. Empty: no standby is waited for.",
							   &monk_standby_names,
							   "",
							   PGC_SIGHUP, GUC_LIST_INPUT,
							   MonkStandbyNamesCheck, MonkStandbyNamesAssign, NULL);

	DefineCustomStringVariable("monk.idempotency_prefix",
							   "Prefix of the idempotency keys monk assigns by default (empty: sync_ and the database's id).",
							   "Empty, the default keys of every database differ; set, the keys are this prefix followed by the event's id.",
							   &monk_idempotency_prefix,
							   "",
							   PGC_SUSET, 0,
							   CheckPrefix, NULL, NULL);

	DefineCustomIntVariable("monk.max_outbox_events",
							"Events the outbox may hold before monk_send refuses new ones (0: unlimited).",
							NULL,
							&monk_max_outbox_events,
							0, 0, INT_MAX,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("monk.retention",
							"How long the segments of delivered events are kept, for monk.sent (0: truncated as soon as settled).",
							NULL,
							&monk_retention,
							0, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_S,
							NULL, NULL, NULL);

	DefineCustomStringVariable("monk.api_key_file",
							   "File holding the API key; when set, it takes precedence over monk.api_key.",
							   "Read at startup and at each reload; trailing white space is ignored.",
							   &api_key_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   CheckApiKeyFile, AssignApiKeyFile, NULL);

	DefineCustomStringVariable("monk.ca_file",
							   "File of CA certificates that verify the Events API's TLS certificate.",
							   "Empty: the system's CA bundle.",
							   &monk_ca_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   CheckCaFile, NULL, NULL);

	DefineCustomIntVariable("monk.max_event_size",
							"Largest event, in bytes of the JSON sent to the Events API.",
							"A larger one is refused when queued (54000); one queued under a higher limit is dead-lettered. "
							"At most monk.max_request_size less 64 bytes counts.",
							&monk_max_event_size,
							1024, 1, 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("monk.max_request_size",
							"Largest request body the worker sends; a batch is cut by bytes as well as by count.",
							"The bodies in flight (monk.max_parallel_requests of them) and the events read ahead stay within a few times this.",
							&monk_max_request_size,
							4096, 64, 1024 * 1024,
							PGC_SIGHUP, GUC_UNIT_KB,
							NULL, NULL, NULL);

	DefineCustomStringVariable("monk.test_wait_points",
							   "For monk's tests: steps of the worker at which it waits for an advisory lock, or fails.",
							   "Comma-separated step names (read, truncate: waits; fail_start: no request starts); see test/MonkTest.pm. Leave empty.",
							   &monk_test_wait_points,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);

	DefineCustomStringVariable("monk.databases",
							   "Databases whose outbox a monk worker exports, comma-separated.",
							   "Read on reload: the launcher starts a worker for a database added, and the worker of one removed stops.",
							   &monk_databases,
							   "postgres",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY | GUC_LIST_INPUT,
							   CheckDatabases, NULL, NULL);

	MarkGUCPrefixReserved("monk");
}
