/*
 * query.c
 *		Verify from SQL: monk_list_events (GET /v1/events, every page),
 *		monk_usage_cost (POST /v1/usage/cost) and monk_verify_export (what a
 *		source holds that the API does not).
 *
 * Each request is made with the HTTP client and the delivery policy of the
 * worker: 429, 5xx, timeouts and connection errors are retried with backoff
 * up to monk.max_retries, 401/403 and 4xx raise a clear error, and query
 * cancellation and statement_timeout are honoured while waiting.  The shape
 * of GET /v1/events's answer is assumed (SPEC §2) and read in one place,
 * ReadEventsPage, so that it is one small change when the real one is known.
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "common/hashfn.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/latch.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/timestamp.h"
#include "utils/tuplesort.h"
#include "utils/tuplestore.h"
#include "utils/typcache.h"

#include "compat.h"
#include "delivery.h"
#include "event.h"
#include "http.h"
#include "keys.h"
#include "settings.h"
#include "source.h"
#include "store.h"

PG_FUNCTION_INFO_V1(monk_list_events);
PG_FUNCTION_INFO_V1(monk_usage_cost);
PG_FUNCTION_INFO_V1(monk_verify_export);

#define PAGE_LIMIT 1000
/* Empty pages in a row that say there are more, before the listing stops */
#define MAX_EMPTY_PAGES 100
#define MAX_ANSWER (64 * 1024 * 1024)

/* Wait ms milliseconds, awake to cancellation. */
static void
SleepInterruptibly(long ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);

	for (;;)
	{
		long		left = (long) ((until - GetCurrentTimestamp()) / 1000);

		if (left <= 0)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, left,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * An answer's body as text of the database's encoding: refused when it holds
 * a NUL byte or is not UTF-8 (the API's encoding), converted otherwise (a
 * character the database's encoding cannot hold is an error, 22P05, as for
 * any client).
 */
static char *
AnswerText(const char *body, size_t len)
{
	const char *nul = memchr(body, '\0', len);

	if (nul != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("the answer of the Events API holds a NUL byte, at byte %d", (int) (nul - body)),
				 errhint("Check monk.base_url: the Events API answers JSON.")));
	if (!pg_verify_mbstr(PG_UTF8, body, (int) len, true))
		ereport(ERROR,
				(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
				 errmsg("the answer of the Events API is not valid UTF-8"),
				 errhint("Check monk.base_url: the Events API answers JSON in UTF-8.")));
	return pg_any_to_server(pnstrdup(body, len), (int) len, PG_UTF8);
}

/* The start of an answer as valid text of this database, cut on a character. */
static char *
AnswerClip(const MonkHttpRequest *req, int max)
{
	char	   *clip = palloc(max + 1);

	(void) MonkValidUtf8(req->response, req->response_len, clip, max + 1);
	return MonkTextForDatabase(clip);
}

/*
 * One call to the Events API with the worker's retry rules.  Returns the
 * answer's body (200); raises on a refused key, a refused request, or when
 * the API did not answer after monk.max_retries retries.
 */
static char *
ApiCall(const char *method, const char *url, const char *body)
{
	/* its curl handles go with the current context, on an error too */
	MonkHttpClient *client = MonkHttpCreate(CurrentMemoryContext);
	MonkHttpRequest req;
	char	   *result = NULL;
	char	   *answer;
	int			attempt = 0;

	memset(&req, 0, sizeof(req));
	req.method = method;
	req.body = body;
	req.body_len = body ? strlen(body) : 0;
	req.max_response = MAX_ANSWER;

	while (result == NULL)
	{
		MonkOutcome outcome;

		if (MonkHttpStart(client, &req, url, MonkApiKey(), monk_request_timeout))
		{
			while (!req.done)
			{
				MonkHttpWait(client, -1, PG_WAIT_EXTENSION);
				CHECK_FOR_INTERRUPTS();
			}
			(void) MonkHttpNextDone(client);
		}
		outcome = MonkClassify(req.status, MONK_READ_OK);

		if (outcome == MONK_OUTCOME_ACCEPTED)
		{
			result = AnswerText(req.big_response ? req.big_response : "", req.big_len);
			break;
		}

		/*
		 * what the API said, as valid text of this database, cut on a
		 * character
		 */
		answer = AnswerClip(&req, 200);
		if (outcome == MONK_OUTCOME_AUTH)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
					 errmsg("the Events API refused the API key (HTTP %ld)", req.status),
					 errhint("Set monk.api_key to a valid key and reload the configuration.")));
		if (outcome == MONK_OUTCOME_SPLIT)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("the Events API refused the request (HTTP %ld)", req.status),
					 errdetail("The answer was: %s", AnswerClip(&req, 500))));
		if (outcome == MONK_OUTCOME_UNEXPECTED)
			ereport(ERROR,
					(errcode(ERRCODE_PROTOCOL_VIOLATION),
					 errmsg("unexpected answer HTTP %ld from the Events API", req.status),
					 errdetail("The answer was: %s", answer),
					 errhint("Check monk.base_url: the Events API answers a read with HTTP 200.")));
		if (req.tls_failed)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("the Events API's TLS certificate was refused: %s", req.error),
					 errhint("Check monk.base_url and monk.ca_file; retrying cannot help.")));
		if (req.response_truncated)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("the answer of the Events API is larger than %d bytes", MAX_ANSWER)));
		if (++attempt > monk_max_retries)
			ereport(ERROR,
					(errcode(ERRCODE_CONNECTION_FAILURE),
					 errmsg("the Events API did not answer successfully after %d attempts", attempt),
					 req.status ? errdetail("The last answer was HTTP %ld: %s", req.status, answer)
					 : errdetail("The last error was: %s", req.error),
					 errhint("Check monk.status and monk.base_url; the request can be repeated.")));
		SleepInterruptibly(MonkBackoffMs(attempt, req.retry_after_ms));
	}
	MonkHttpFreeResponse(&req);
	MonkHttpDestroy(client);
	return result;
}

/* Parse an answer as JSON, with a clear error when it is not. */
static Jsonb *
ParseAnswer(const char *body)
{
	Jsonb	   *jb = NULL;
	MemoryContext cxt = CurrentMemoryContext;

	PG_TRY();
	{
		jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(body)));
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("the answer of the Events API is not JSON"),
				 errdetail("It begins: %s", pnstrdup(body, pg_mbcliplen(body, strlen(body), 200)))));
	}
	PG_END_TRY();
	return jb;
}

/* Append a query parameter, percent-encoded. */
static void
AddParam(StringInfo url, const char *name, const char *value)
{
	static const char hex[] = "0123456789ABCDEF";

	if (value == NULL)
		return;
	/* the API reads UTF-8 */
	value = pg_server_to_any(value, strlen(value), PG_UTF8);
	appendStringInfo(url, "%c%s=", strchr(url->data, '?') ? '&' : '?', name);
	for (const unsigned char *p = (const unsigned char *) value; *p; p++)
	{
		if (isalnum(*p) || *p == '-' || *p == '.' || *p == '_' || *p == '~')
			appendStringInfoChar(url, *p);
		else
		{
			appendStringInfoChar(url, '%');
			appendStringInfoChar(url, hex[*p >> 4]);
			appendStringInfoChar(url, hex[*p & 15]);
		}
	}
}

/*
 * A time sent to the API must be finite and within ISO 8601's years 1 to
 * 9999 (infinity is refused here, not by the rendering).
 */
static void
CheckApiTime(const char *name, bool given, TimestampTz ts)
{
	if (given && !MonkTimestampInIsoRange(ts))
		ereport(ERROR,
				(errcode(ERRCODE_DATETIME_VALUE_OUT_OF_RANGE),
				 errmsg("%s must be a finite time between the years 1 and 9999", name),
				 errhint("Pass NULL for no bound.")));
}

static char *
IsoString(TimestampTz ts)
{
	StringInfoData buf;

	initStringInfo(&buf);
	MonkRenderTimestamp(&buf, ts);
	return buf.data;
}

/* A string member of a JSON object, or NULL. */
static char *
MemberString(JsonbContainer *obj, const char *key)
{
	JsonbValue *v = getKeyJsonValueFromContainer(obj, key, strlen(key), NULL);

	if (v == NULL || v->type != jbvString)
		return NULL;
	return pnstrdup(v->val.string.val, v->val.string.len);
}

/* One event of a page, as monk_list_events returns it. */
typedef struct ListedEvent
{
	char	   *event_name;
	char	   *customer_id;
	char	   *external_customer_id;
	bool		has_timestamp;
	TimestampTz timestamp;
	Jsonb	   *properties;
	char	   *idempotency_key;
} ListedEvent;

typedef void (*ListedEventCallback) (void *arg, ListedEvent *ev);

/*
 * Read one page of GET /v1/events: {"data": [event, ...], "hasMore": bool,
 * "nextCursor": string|null}.  Returns the cursor of the next page, or NULL.
 */
static char *
ReadEventsPage(Jsonb *page, ListedEventCallback cb, void *arg, int *nread)
{
	JsonbValue *data;
	JsonbValue *more;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	int			i = 0;

	if (JB_ROOT_IS_SCALAR(page) || !JB_ROOT_IS_OBJECT(page))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("the answer of GET /v1/events is not a JSON object")));
	data = getKeyJsonValueFromContainer(&page->root, "data", 4, NULL);
	more = getKeyJsonValueFromContainer(&page->root, "hasMore", 7, NULL);
	if (data == NULL || data->type != jbvBinary || !JsonContainerIsArray(data->val.binary.data))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("the answer of GET /v1/events has no \"data\" array")));
	if (more != NULL && more->type != jbvBool && more->type != jbvNull)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
				 errmsg("the answer of GET /v1/events has a \"hasMore\" that is not a boolean")));

	it = JsonbIteratorInit(data->val.binary.data);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		ListedEvent ev;
		JsonbContainer *obj;
		JsonbValue *props;
		char	   *ts;
		const char *why;

		if (tok != WJB_ELEM)
			continue;
		if (v.type != jbvBinary || !JsonContainerIsObject(v.val.binary.data))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("the answer of GET /v1/events has an item of \"data\" that is not an object, at index %d", i)));
		i++;
		obj = v.val.binary.data;
		memset(&ev, 0, sizeof(ev));
		ev.event_name = MemberString(obj, "eventName");
		ev.customer_id = MemberString(obj, "customerId");
		ev.external_customer_id = MemberString(obj, "externalCustomerId");
		ev.idempotency_key = MemberString(obj, "idempotencyKey");
		ts = MemberString(obj, "timestamp");
		if (ts && MonkParseIso8601(ts, &ev.timestamp, &why))
			ev.has_timestamp = true;
		props = getKeyJsonValueFromContainer(obj, "properties", 10, NULL);
		if (props && props->type == jbvBinary)
			ev.properties = JsonbValueToJsonb(props);
		cb(arg, &ev);
	}
	*nread = i;
	if (more && more->type == jbvBool && more->val.boolean)
	{
		char	   *next = MemberString(&page->root, "nextCursor");

		if (next == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
					 errmsg("the answer of GET /v1/events has more pages but no \"nextCursor\"")));
		return next;
	}
	return NULL;
}

/* Page through GET /v1/events with these filters, event by event. */
static void
ListEvents(const char *customer_id, const char *external_customer_id, const char *event_name,
		   bool has_start, TimestampTz start, bool has_end, TimestampTz end,
		   ListedEventCallback cb, void *arg)
{
	char	   *cursor = NULL;
	MemoryContext pagecxt = AllocSetContextCreate(CurrentMemoryContext, "monk page",
												  ALLOCSET_DEFAULT_SIZES);
	HTAB	   *seen;
	HASHCTL		ctl;
	int			empty = 0;
	int			pages = 0;

	/* the cursors followed (their hashes): an API paging in a loop stops */
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(uint64);
	ctl.hcxt = CurrentMemoryContext;
	seen = hash_create("monk cursors", 256, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	do
	{
		MemoryContext old = MemoryContextSwitchTo(pagecxt);
		StringInfoData url;
		char	   *base = MonkBaseUrl();
		char	   *next;
		int			nread;

		initStringInfo(&url);
		appendStringInfo(&url, "%s/v1/events", base);
		AddParam(&url, "limit", CppAsString2(PAGE_LIMIT));
		AddParam(&url, "customerId", customer_id);
		AddParam(&url, "externalCustomerId", external_customer_id);
		AddParam(&url, "eventName", event_name);
		if (has_start)
			AddParam(&url, "start", IsoString(start));
		if (has_end)
			AddParam(&url, "end", IsoString(end));
		AddParam(&url, "cursor", cursor);
		next = ReadEventsPage(ParseAnswer(ApiCall("GET", url.data, NULL)), cb, arg, &nread);
		pages++;
		empty = nread == 0 ? empty + 1 : 0;
		if (next != NULL)
		{
			uint64		h = hash_bytes_extended((const unsigned char *) next, strlen(next), 0);
			bool		found;

			(void) hash_search(seen, &h, HASH_ENTER, &found);
			if (found)
				ereport(ERROR,
						(errcode(ERRCODE_PROTOCOL_VIOLATION),
						 errmsg("the Events API returned a \"nextCursor\" it had returned before, after %d pages", pages),
						 errdetail("Following it would page forever."),
						 errhint("Check monk.base_url; the Events API should not do this.")));
			if (empty >= MAX_EMPTY_PAGES)
				ereport(ERROR,
						(errcode(ERRCODE_PROTOCOL_VIOLATION),
						 errmsg("the Events API returned %d empty pages in a row that say there are more", empty),
						 errhint("Check monk.base_url; the Events API should not do this.")));
		}
		MemoryContextSwitchTo(old);
		cursor = next ? pstrdup(next) : NULL;
		/* one page in memory at a time */
		MemoryContextReset(pagecxt);
	} while (cursor != NULL);
	MemoryContextDelete(pagecxt);
	hash_destroy(seen);
}

static char *
TextArgOrNull(FunctionCallInfo fcinfo, int n)
{
	return PG_ARGISNULL(n) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(n));
}

typedef struct ListState
{
	ReturnSetInfo *rsinfo;
} ListState;

static void
PutListedEvent(void *arg, ListedEvent *ev)
{
	ListState  *st = arg;
	Datum		values[6];
	bool		nulls[6];

	/* in the page's context: the tuplestore copies the row into its own */

	memset(nulls, false, sizeof(nulls));
	values[0] = ev->event_name ? CStringGetTextDatum(ev->event_name) : (nulls[0] = true, (Datum) 0);
	values[1] = ev->customer_id ? CStringGetTextDatum(ev->customer_id) : (nulls[1] = true, (Datum) 0);
	values[2] = ev->external_customer_id ? CStringGetTextDatum(ev->external_customer_id) : (nulls[2] = true, (Datum) 0);
	values[3] = ev->has_timestamp ? TimestampTzGetDatum(ev->timestamp) : (nulls[3] = true, (Datum) 0);
	values[4] = ev->properties ? JsonbPGetDatum(ev->properties) : (nulls[4] = true, (Datum) 0);
	values[5] = ev->idempotency_key ? CStringGetTextDatum(ev->idempotency_key) : (nulls[5] = true, (Datum) 0);
	tuplestore_putvalues(st->rsinfo->setResult, st->rsinfo->setDesc, values, nulls);
}

/*
 * monk_list_events(customer_id, external_customer_id, start, "end", event_name)
 *   RETURNS TABLE (event_name, customer_id, external_customer_id, "timestamp",
 *                  properties, idempotency_key)
 * Rows go to a tuplestore page by page, which spills to disk past work_mem.
 */
Datum
monk_list_events(PG_FUNCTION_ARGS)
{
	ListState	st;

	InitMaterializedSRF(fcinfo, 0);
	st.rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	CheckApiTime("start", !PG_ARGISNULL(2), PG_ARGISNULL(2) ? 0 : PG_GETARG_TIMESTAMPTZ(2));
	CheckApiTime("\"end\"", !PG_ARGISNULL(3), PG_ARGISNULL(3) ? 0 : PG_GETARG_TIMESTAMPTZ(3));
	if (!PG_ARGISNULL(2) && !PG_ARGISNULL(3) && PG_GETARG_TIMESTAMPTZ(3) < PG_GETARG_TIMESTAMPTZ(2))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("\"end\" must not be before start"),
				 errhint("start is inclusive and \"end\" exclusive.")));
	ListEvents(TextArgOrNull(fcinfo, 0), TextArgOrNull(fcinfo, 1), TextArgOrNull(fcinfo, 4),
			   !PG_ARGISNULL(2), PG_ARGISNULL(2) ? 0 : PG_GETARG_TIMESTAMPTZ(2),
			   !PG_ARGISNULL(3), PG_ARGISNULL(3) ? 0 : PG_GETARG_TIMESTAMPTZ(3),
			   PutListedEvent, &st);
	return (Datum) 0;
}

/* monk_usage_cost(request jsonb) RETURNS jsonb: POST /v1/usage/cost as is. */
Datum
monk_usage_cost(PG_FUNCTION_ARGS)
{
	Jsonb	   *request;
	char	   *body;
	char	   *url;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("request must not be NULL"),
				 errhint("Pass the body of POST /v1/usage/cost as jsonb, for example '{\"externalCustomerId\": \"cus_1\"}'.")));
	request = PG_GETARG_JSONB_P(0);
	if (!JB_ROOT_IS_OBJECT(request) || JB_ROOT_IS_SCALAR(request))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("request must be a JSON object")));
	body = JsonbToCString(NULL, &request->root, VARSIZE(request));
	/* the API reads UTF-8 */
	body = pg_server_to_any(body, strlen(body), PG_UTF8);
	url = psprintf("%s/v1/usage/cost", MonkBaseUrl());
	PG_RETURN_JSONB_P(ParseAnswer(ApiCall("POST", url, body)));
}

/*
 * monk_verify_export compares two sets that may not fit in memory: the keys
 * the API holds and the source's rows.  Each goes to a sort that spills to
 * disk past work_mem, by key (bytes); the two sorted runs are then merged.
 * Memory stays that of a page and of work_mem, whatever the sizes.
 */
typedef struct KeySort
{
	TupleDesc	desc;
	TupleTableSlot *slot;
	Tuplesortstate *sort;
} KeySort;

/* Columns of the source's sort (the first, the key, is the API's sort's only one). */
enum
{
	V_KEY = 0,
	V_ID,
	V_EVENT_NAME,
	V_TIMESTAMP,
	V_REASON,
	V_NCOLUMNS
};

static void
KeySortBegin(KeySort *ks, int natts)
{
	AttrNumber	key = 1;
	Oid			lt = lookup_type_cache(BYTEAOID, TYPECACHE_LT_OPR)->lt_opr;
	Oid			collation = InvalidOid;
	bool		nulls_first = false;

	ks->desc = CreateTemplateTupleDesc(natts);
	TupleDescInitEntry(ks->desc, 1, "key", BYTEAOID, -1, 0);
	if (natts > 1)
	{
		TupleDescInitEntry(ks->desc, 2, "id", INT8OID, -1, 0);
		TupleDescInitEntry(ks->desc, 3, "event_name", TEXTOID, -1, 0);
		TupleDescInitEntry(ks->desc, 4, "timestamp", TIMESTAMPTZOID, -1, 0);
		TupleDescInitEntry(ks->desc, 5, "reason", TEXTOID, -1, 0);
	}
	MonkTupleDescFinalize(ks->desc);
	ks->slot = MakeSingleTupleTableSlot(ks->desc, &TTSOpsMinimalTuple);
	ks->sort = tuplesort_begin_heap(ks->desc, 1, &key, &lt, &collation, &nulls_first, work_mem,
									NULL, TUPLESORT_NONE);
}

static void
KeySortPut(KeySort *ks, const Datum *values, const bool *nulls)
{
	TupleTableSlot *virt = MakeSingleTupleTableSlot(ks->desc, &TTSOpsVirtual);

	memcpy(virt->tts_values, values, sizeof(Datum) * ks->desc->natts);
	memcpy(virt->tts_isnull, nulls, sizeof(bool) * ks->desc->natts);
	ExecStoreVirtualTuple(virt);
	tuplesort_puttupleslot(ks->sort, virt);
	ExecDropSingleTupleTableSlot(virt);
}

static Datum
KeyBytes(const char *key)
{
	size_t		len = strlen(key);
	bytea	   *b = palloc(VARHDRSZ + len);

	SET_VARSIZE(b, VARHDRSZ + len);
	memcpy(VARDATA(b), key, len);
	return PointerGetDatum(b);
}

/* Each key the API lists goes to the API's sort (in the page's memory). */
static void
CollectKey(void *arg, ListedEvent *ev)
{
	KeySort    *ks = arg;
	Datum		values[1];
	bool		nulls[1] = {false};

	if (ev->idempotency_key == NULL)
		return;
	values[0] = KeyBytes(ev->idempotency_key);
	KeySortPut(ks, values, nulls);
}

/* The next tuple of a sort in its slot, and its key; false at the end. */
static bool
KeySortNext(KeySort *ks, bytea **key)
{
	bool		isnull;

	if (!tuplesort_gettupleslot(ks->sort, true, true, ks->slot, NULL))
		return false;
	*key = DatumGetByteaPP(slot_getattr(ks->slot, 1, &isnull));
	return true;
}

static int
CompareBytes(bytea *a, bytea *b)
{
	int			la = VARSIZE_ANY_EXHDR(a);
	int			lb = VARSIZE_ANY_EXHDR(b);
	int			c = memcmp(VARDATA_ANY(a), VARDATA_ANY(b), Min(la, lb));

	return c != 0 ? c : (la > lb) - (la < lb);
}

/* A row of the source the API does not hold (a tuple of the source's sort). */
static void
PutMissing(ReturnSetInfo *rsinfo, TupleTableSlot *row)
{
	Datum		values[5];
	bool		nulls[5];
	bool		isnull;
	bytea	   *key = DatumGetByteaPP(slot_getattr(row, V_KEY + 1, &isnull));

	values[0] = slot_getattr(row, V_ID + 1, &nulls[0]);
	values[1] = PointerGetDatum(cstring_to_text_with_len(VARDATA_ANY(key), VARSIZE_ANY_EXHDR(key)));
	nulls[1] = false;
	values[2] = slot_getattr(row, V_EVENT_NAME + 1, &nulls[2]);
	values[3] = slot_getattr(row, V_TIMESTAMP + 1, &nulls[3]);
	values[4] = slot_getattr(row, V_REASON + 1, &nulls[4]);
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
}

/*
 * monk_verify_export(source regclass, since timestamptz)
 *   RETURNS TABLE (id bigint, idempotency_key text, event_name text,
 *                  "timestamp" timestamptz, reason text)
 * The rows of the source (with a timestamp at or after "since", when given)
 * whose key the API does not list.
 */
Datum
monk_verify_export(PG_FUNCTION_ARGS)
{
	Oid			source;
	bool		has_since = !PG_ARGISNULL(1);
	TimestampTz since = has_since ? PG_GETARG_TIMESTAMPTZ(1) : 0;
	int			positions[MONK_SOURCE_NCOLUMNS];
	char	   *query;
	Portal		portal;
	TimestampTz now = GetCurrentTimestamp();
	KeySort		listed;
	KeySort		rows;
	MemoryContext rowcxt;
	bytea	   *lkey = NULL;
	bytea	   *rkey;
	bool		more_listed;
	const char *prefix;

	CheckApiTime("since", has_since, since);
	source = MonkCheckSource(PG_ARGISNULL(0) ? InvalidOid : PG_GETARG_OID(0));
	query = MonkSourceQuery(source, true, false, positions);
	if (has_since && positions[MONK_SOURCE_TIMESTAMP] == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("%s has no column \"timestamp\" to compare with since", get_rel_name(source)),
				 errhint("Pass NULL as since to verify every row.")));
	InitMaterializedSRF(fcinfo, 0);

	/* what the API holds since then, sorted by key */
	KeySortBegin(&listed, 1);
	ListEvents(NULL, NULL, NULL, has_since, since, false, 0, CollectKey, &listed);
	tuplesort_performsort(listed.sort);

	/* what the source holds, row by row, sorted by key */
	KeySortBegin(&rows, V_NCOLUMNS);
	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "monk verify row", ALLOCSET_DEFAULT_SIZES);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* the keys the export gave its rows: its cursor's (keys.c) */
	prefix = MonkKeyPrefix(MonkSourceLegacyKeys(MonkSourceName(source)));
	portal = MonkSourceOpen(query, 0, NULL, 0);
	for (;;)
	{
		SPI_cursor_fetch(portal, true, 10000);
		if (SPI_processed == 0)
			break;
		for (uint64 r = 0; r < SPI_processed; r++)
		{
			MemoryContext old = MemoryContextSwitchTo(rowcxt);
			MonkSourceRow row;
			MonkEventError err;
			bool		valid = MonkSourceRowRead(SPI_tuptable->vals[r], SPI_tuptable->tupdesc, now,
												  prefix, &row, &err);
			Datum		values[V_NCOLUMNS];
			bool		nulls[V_NCOLUMNS] = {false, false, false, false, false};

			if (!has_since || (row.ev.has_timestamp && row.ev.timestamp >= since))
			{
				values[V_KEY] = KeyBytes(row.key);
				values[V_ID] = Int64GetDatum(row.id);
				values[V_EVENT_NAME] = row.ev.event_name ? CStringGetTextDatum(row.ev.event_name) : (nulls[V_EVENT_NAME] = true, (Datum) 0);
				values[V_TIMESTAMP] = TimestampTzGetDatum(row.ev.timestamp);
				nulls[V_TIMESTAMP] = !row.ev.has_timestamp;
				values[V_REASON] = CStringGetTextDatum(valid ? "missing"
													   : psprintf("missing: the row is invalid (%s)", err.message));
				KeySortPut(&rows, values, nulls);
			}
			MemoryContextSwitchTo(old);
			/* what a row needs lives until the next row: memory stays flat */
			MemoryContextReset(rowcxt);
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	SPI_finish();
	tuplesort_performsort(rows.sort);

	/* the rows whose key the API does not list */
	more_listed = KeySortNext(&listed, &lkey);
	while (KeySortNext(&rows, &rkey))
	{
		while (more_listed && CompareBytes(lkey, rkey) < 0)
			more_listed = KeySortNext(&listed, &lkey);
		if (!more_listed || CompareBytes(lkey, rkey) != 0)
			PutMissing((ReturnSetInfo *) fcinfo->resultinfo, rows.slot);
	}
	tuplesort_end(listed.sort);
	tuplesort_end(rows.sort);
	MemoryContextDelete(rowcxt);
	return (Datum) 0;
}
