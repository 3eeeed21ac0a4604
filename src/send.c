/*
 * send.c
 *		The SQL-callable functions of monk: monk_send (both forms), the event
 *		rendering preview monk.event_json, and the live worker figures behind
 *		monk.status.
 */
#include "postgres.h"

#include "access/xact.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "event.h"
#include "keys.h"
#include "outbox.h"
#include "http.h"
#include "settings.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(monk_send);
PG_FUNCTION_INFO_V1(monk_send_jsonb);
PG_FUNCTION_INFO_V1(monk_event_json);
PG_FUNCTION_INFO_V1(monk_event_json_jsonb);
PG_FUNCTION_INFO_V1(monk_worker_status);
PG_FUNCTION_INFO_V1(monk_wake_worker);
PG_FUNCTION_INFO_V1(monk_requeue);

/* Does s, blanks aside, begin with '{' and end with '}'? */
static bool
LooksLikeJsonObject(const char *s)
{
	size_t		len;

	while (*s == ' ' || *s == '\t' || *s == '\n' || *s == '\r')
		s++;
	len = strlen(s);
	while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t' || s[len - 1] == '\n' || s[len - 1] == '\r'))
		len--;
	return len >= 2 && s[0] == '{' && s[len - 1] == '}';
}

/* Read the arguments of the six-argument form into an event. */
static void
EventFromArgs(FunctionCallInfo fcinfo, MonkEvent *ev)
{
	MonkEventError err;

	memset(ev, 0, sizeof(*ev));
	if (!PG_ARGISNULL(0))
		ev->event_name = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (!PG_ARGISNULL(1))
		ev->external_customer_id = text_to_cstring(PG_GETARG_TEXT_PP(1));

	/*
	 * The calls people type: monk_send('{"eventName": ...}') without the cast
	 * resolves to this form; it is the jsonb form, as meant.  And a JSON
	 * object where the customer goes is properties with the customer
	 * forgotten.
	 */
	if (ev->event_name && LooksLikeJsonObject(ev->event_name))
	{
		for (int i = 1; i < PG_NARGS(); i++)
		{
			if (!PG_ARGISNULL(i))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid event: event_name is a JSON object"),
						 errdetail("An event is either a whole JSON object, alone, or its fields as arguments."),
						 errhint("Pass the object alone, cast to jsonb: monk_send('{\"eventName\": ..., \"externalCustomerId\": ...}'::jsonb).")));
		}
		if (!MonkEventFromJsonb(DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(ev->event_name))),
								ev, &err))
			MonkEventRaise(&err);
		return;
	}
	if (ev->external_customer_id && LooksLikeJsonObject(ev->external_customer_id))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid event: external_customer_id is a JSON object"),
				 errdetail("The second argument is the customer; properties come third."),
				 errhint("For example: monk_send('api_call', 'cus_123', '{\"tokens\": 42}').")));
	if (!PG_ARGISNULL(2))
		ev->properties = PG_GETARG_JSONB_P(2);
	if (!PG_ARGISNULL(3))
	{
		ev->has_timestamp = true;
		ev->timestamp = PG_GETARG_TIMESTAMPTZ(3);
	}
	if (!PG_ARGISNULL(4))
		ev->idempotency_key = text_to_cstring(PG_GETARG_TEXT_PP(4));
	if (!PG_ARGISNULL(5))
		ev->customer_id = PG_GETARG_UUID_P(5);
}

/* Read the jsonb form into an event, raising type errors. */
static void
EventFromJsonbArg(FunctionCallInfo fcinfo, MonkEvent *ev)
{
	MonkEventError err;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid event: event must not be NULL")));
	if (!MonkEventFromJsonb(PG_GETARG_JSONB_P(0), ev, &err))
		MonkEventRaise(&err);
}

/*
 * Validate an event, give it its timestamp (now() when absent), and raise
 * when it breaks a rule of the API.
 */
static void
ValidateEvent(MonkEvent *ev, TimestampTz now)
{
	MonkEventError err;

	if (!ev->has_timestamp)
	{
		ev->has_timestamp = true;
		ev->timestamp = GetCurrentTransactionStartTimestamp();
	}
	if (!MonkEventCheck(ev, now, &err))
		MonkEventRaise(&err);
}

/*
 * Queue a validated event in the outbox in the caller's transaction and
 * return its idempotency key.  The key is the caller's, or the prefix
 * (keys.c), "outbox_" and the event's outbox id (sync_5f0c2a9e13b7d4a8_outbox_42):
 * never the key of an exported row, which is the prefix and the row's id
 * (sync_5f0c2a9e13b7d4a8_42).  It is stored with the event and never
 * changes afterwards.
 */
static text *
QueueEvent(MonkEvent *ev, TimestampTz now)
{
	int64		id;
	const char *key;
	StringInfoData json;

	MonkRequirePreload();
	ValidateEvent(ev, now);

	MonkOutboxCheckCapacity();
	id = MonkOutboxNextId();
	key = ev->idempotency_key ? ev->idempotency_key
		: psprintf("%s" MONK_OUTBOX_KEY_INFIX INT64_FORMAT, MonkKeyPrefix(false), id);

	initStringInfo(&json);
	MonkEventCheckSize(MonkEventRender(&json, ev, key, MonkMaxEventBytes()) ? json.len : -1);
	MonkEventCheckBytes(json.data, json.len);
	MonkOutboxInsert(id, key, json.data, json.len, now);
	MonkWakeWorkerAtCommit(1);
	pfree(json.data);
	return cstring_to_text(key);
}

/* monk_send(event_name, external_customer_id, properties, event_time, idempotency_key, customer_id) */
Datum
monk_send(PG_FUNCTION_ARGS)
{
	MonkEvent	ev;

	EventFromArgs(fcinfo, &ev);
	PG_RETURN_TEXT_P(QueueEvent(&ev, GetCurrentTimestamp()));
}

/* monk_send(event jsonb): the API's own camelCase shape */
Datum
monk_send_jsonb(PG_FUNCTION_ARGS)
{
	MonkEvent	ev;

	EventFromJsonbArg(fcinfo, &ev);
	PG_RETURN_TEXT_P(QueueEvent(&ev, GetCurrentTimestamp()));
}

/* The JSON monk_send would queue for this event, without queueing it. */
static Datum
RenderOnly(MonkEvent *ev)
{
	StringInfoData json;

	ValidateEvent(ev, GetCurrentTimestamp());
	initStringInfo(&json);
	(void) MonkEventRender(&json, ev, ev->idempotency_key, 0);
	return PointerGetDatum(cstring_to_text_with_len(json.data, json.len));
}

/* monk.event_json(...): same arguments as monk_send */
Datum
monk_event_json(PG_FUNCTION_ARGS)
{
	MonkEvent	ev;

	EventFromArgs(fcinfo, &ev);
	PG_RETURN_DATUM(RenderOnly(&ev));
}

/* monk.event_json(event jsonb) */
Datum
monk_event_json_jsonb(PG_FUNCTION_ARGS)
{
	MonkEvent	ev;

	EventFromJsonbArg(fcinfo, &ev);
	PG_RETURN_DATUM(RenderOnly(&ev));
}

/*
 * monk.worker_status(): one row per database of monk.databases with the live
 * figures of its worker.
 */
Datum
monk_worker_status(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	MonkRequirePreload();
	InitMaterializedSRF(fcinfo, 0);

	for (int i = 0; i < MonkShmem->nslots; i++)
	{
		MonkWorkerSlot *slot = &MonkShmem->slots[i];
		Datum		values[16];
		bool		nulls[16];
		int			n = 0;
		int			pid = slot->pid;
		TimestampTz started,
					success,
					error_at;
		char		last_error[MONK_LAST_ERROR_LEN];
		char		dbname[NAMEDATALEN];

		SpinLockAcquire(&slot->mutex);
		strlcpy(dbname, slot->dbname, sizeof(dbname));
		started = slot->started_at;
		success = slot->last_success_at;
		error_at = slot->last_error_at;
		strlcpy(last_error, slot->last_error, sizeof(last_error));
		SpinLockRelease(&slot->mutex);
		/* a free slot (launcher.c) */
		if (dbname[0] == '\0')
			continue;

		memset(nulls, false, sizeof(nulls));
		values[n++] = CStringGetTextDatum(dbname);
		values[n] = Int32GetDatum(pid);
		nulls[n++] = (pid == 0);
		values[n++] = CStringGetTextDatum(pid ? MonkStateName(slot->state) : "not running");
		values[n++] = CStringGetTextDatum(MonkCircuitName(slot->circuit));
		for (int c = 0; c <= MONK_REQUESTS_FAILED; c++)
			values[n++] = Int64GetDatum((int64) pg_atomic_read_u64(&slot->counters[c]));
		values[n] = TimestampTzGetDatum(started);
		nulls[n++] = (started == 0);
		values[n] = TimestampTzGetDatum(success);
		nulls[n++] = (success == 0);
		values[n] = CStringGetTextDatum(MonkTextForDatabase(last_error));
		nulls[n++] = (last_error[0] == '\0');
		values[n] = TimestampTzGetDatum(error_at);
		nulls[n++] = (error_at == 0);

		/*
		 * 0.4's column (0.3's definition, before ALTER EXTENSION UPDATE, has
		 * not it)
		 */
		if (rsinfo->setDesc->natts > n)
			values[n++] = Int64GetDatum((int64) pg_atomic_read_u64(&slot->counters[MONK_REQUESTS_OTHER]));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* monk.wake_worker(): wake this database's worker at commit. */
Datum
monk_wake_worker(PG_FUNCTION_ARGS)
{
	MonkRequirePreload();
	MonkWakeWorkerAtCommit(0);
	PG_RETURN_VOID();
}

/*
 * monk.requeue(id, idempotency_key, event, queued_at): queue again an event
 * already rendered (a dead letter), with its id and key.
 */
Datum
monk_requeue(PG_FUNCTION_ARGS)
{
	text	   *key = PG_GETARG_TEXT_PP(1);
	text	   *event = PG_GETARG_TEXT_PP(2);

	MonkRequirePreload();
	MonkOutboxInsert(PG_GETARG_INT64(0), text_to_cstring(key), VARDATA_ANY(event),
					 VARSIZE_ANY_EXHDR(event), PG_GETARG_TIMESTAMPTZ(3));
	MonkWakeWorkerAtCommit(1);
	PG_RETURN_VOID();
}
