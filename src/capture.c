/*
 * capture.c
 *		monk_capture: a trigger function that turns the rows of a table into
 *		events, declared in CREATE TRIGGER's arguments instead of PL/pgSQL.
 *
 * The arguments are the event name, then options written name=value,
 * resolved against the table once into a mapping (capture_map.c) kept per
 * trigger for the session.  A row becomes the event
 * monk_send would queue for it: the same validation (SQLSTATE 22023, the
 * message naming the column), the same outbox, the same wake-up at commit,
 * and the same privileges (no right on schema monk is needed to fire it).
 *
 * The default key is the prefix (keys.c: sync_ and the database's id, or
 * 0.3's sync_ for a table captured under 0.3), the table, the row's primary
 * key and the event name: sync_5f0c2a9e13b7d4a8_public.api_calls:42:api_call
 * (identifiers quoted as SQL quotes them, ',' ':' and '\' in key values
 * escaped with '\').  It is stable for the row, differs between tables and
 * between two triggers of one table, and never equals the default key of an
 * exported row (prefix and id) or of monk_send (prefix, outbox_ and id),
 * which hold no ':'.  The
 * table is the partitioned table for the partitions a trigger was cloned
 * to, so that a row's key does not depend on the way it was inserted.
 *
 * An UPDATE is a correction: the row's event is queued again under the
 * same key (the log sends a key's versions in order, so the newest one is
 * billed), unless the event would come out the same; an UPDATE that changes
 * the primary key is refused, since the new key would bill the row twice.
 * At statement level the transition tables are read in one pass each (old
 * rows into a hash by key, new rows streamed into the outbox).  DELETE and
 * TRUNCATE cannot be expressed to the Events API, whose events are
 * immutable: CREATE TRIGGER refuses them, and so does the function when
 * fired by a trigger created without monk loaded.
 */
#include "postgres.h"

#include <math.h>

#include "access/xact.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "common/shortest_dec.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/hsearch.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/uuid.h"

#include "capture_map.h"
#include "event.h"
#include "keys.h"
#include "outbox.h"
#include "settings.h"
#include "shmem.h"

PG_FUNCTION_INFO_V1(monk_capture);

/* The buffers a row is rendered into, reused from row to row. */
typedef struct RowBuffers
{
	StringInfoData key;
	StringInfoData json;
	StringInfoData customer;	/* the external customer id */
	StringInfoData props;		/* the properties object */
} RowBuffers;


/* ------------------------------------------------------------------------
 * A row as an event
 * ------------------------------------------------------------------------
 */

/*
 * Append a value as text (keys, external customer ids): the type's output,
 * except for the types whose output depends on settings (DateStyle,
 * extra_float_digits, TimeZone), written in one fixed form instead.
 */
static void
AppendText(StringInfo buf, const MonkCaptureColumn *col, Datum value)
{
	char		digits[Max(MAXINT8LEN, DOUBLE_SHORTEST_DECIMAL_LEN) + 1];
	char		date[MAXDATELEN + 1];

	switch (col->kind)
	{
		case MONK_CAPTURE_TEXT:
			{
				text	   *t = DatumGetTextPP(value);

				appendBinaryStringInfo(buf, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
				return;
			}
		case MONK_CAPTURE_INT:
			appendBinaryStringInfo(buf, digits,
								   pg_lltoa(col->type == INT8OID ? DatumGetInt64(value) :
											col->type == INT4OID ? DatumGetInt32(value) :
											DatumGetInt16(value), digits));
			return;
		case MONK_CAPTURE_FLOAT4:
			float_to_shortest_decimal_buf(DatumGetFloat4(value), digits);
			appendStringInfoString(buf, digits);
			return;
		case MONK_CAPTURE_FLOAT8:
			double_to_shortest_decimal_buf(DatumGetFloat8(value), digits);
			appendStringInfoString(buf, digits);
			return;
		case MONK_CAPTURE_TIMESTAMPTZ:
			if (MonkTimestampInIsoRange(DatumGetTimestampTz(value)))
			{
				MonkRenderTimestamp(buf, DatumGetTimestampTz(value));
				return;
			}
			break;
		case MONK_CAPTURE_TIMESTAMP:
		case MONK_CAPTURE_DATE:
			appendStringInfoString(buf, JsonEncodeDateTime(date, value, col->type, NULL));
			return;
		default:
			break;
	}
	appendStringInfoString(buf, OutputFunctionCall((FmgrInfo *) &col->out, value));
}

/* What became of a property's value. */
typedef enum PropertyValue
{
	PROPERTY_WRITTEN,
	PROPERTY_DROPPED,			/* a JSON null: left out, as monk_send does */
	PROPERTY_REFUSED			/* see *err */
} PropertyValue;

/* A number of a property, checked as monk_send checks one. */
static PropertyValue
AppendNumeric(StringInfo buf, const MonkCaptureColumn *col, Numeric num, MonkEventError *err)
{
	char	   *s;

	if (numeric_is_nan(num) || numeric_is_inf(num))
	{
		MonkEventFail(err, NULL, psprintf("column \"%s\" is not a finite number", col->name),
					  NULL, pstrdup("The Events API takes finite numbers only."));
		return PROPERTY_REFUSED;
	}
	if (!MonkNumericFitsApi(num, &s))
	{
		MonkEventFail(err, NULL, psprintf("column \"%s\" holds a number the Events API cannot hold exactly", col->name),
					  MonkNumericRefusal(s), pstrdup("Round it, or map a text column."));
		return PROPERTY_REFUSED;
	}
	appendStringInfoString(buf, s);
	return PROPERTY_WRITTEN;
}

/* A jsonb property: its scalar. */
static PropertyValue
AppendJsonb(StringInfo buf, const MonkCaptureColumn *col, Jsonb *jb, MonkEventError *err)
{
	JsonbValue	v;

	if (!JsonbExtractScalar(&jb->root, &v))
	{
		MonkEventFail(err, NULL, psprintf("column \"%s\" holds a JSON %s, not a string, number or boolean",
										  col->name, JsonContainerIsArray(&jb->root) ? "array" : "object"),
					  NULL, pstrdup("Map each value as a column of its own, for example a generated column."));
		return PROPERTY_REFUSED;
	}
	switch (v.type)
	{
		case jbvString:
			if (!MonkEscapeJsonWithin(buf, v.val.string.val, v.val.string.len, MonkMaxEventBytes()))
				MonkEventCheckSize(-1);
			return PROPERTY_WRITTEN;
		case jbvNumeric:
			return AppendNumeric(buf, col, v.val.numeric, err);
		case jbvBool:
			appendStringInfoString(buf, v.val.boolean ? "true" : "false");
			return PROPERTY_WRITTEN;
		default:
			return PROPERTY_DROPPED;
	}
}

/* Append a property's value as JSON. */
static PropertyValue
AppendValue(StringInfo buf, const MonkCaptureColumn *col, Datum value, MonkEventError *err)
{
	StringInfoData str;

	switch (col->kind)
	{
		case MONK_CAPTURE_INT:
			AppendText(buf, col, value);
			return PROPERTY_WRITTEN;
		case MONK_CAPTURE_FLOAT4:
		case MONK_CAPTURE_FLOAT8:
			{
				double		v = col->kind == MONK_CAPTURE_FLOAT4 ? DatumGetFloat4(value) : DatumGetFloat8(value);

				if (isnan(v) || isinf(v))
				{
					MonkEventFail(err, NULL, psprintf("column \"%s\" is not a finite number", col->name),
								  NULL, pstrdup("The Events API takes finite numbers only."));
					return PROPERTY_REFUSED;
				}
				AppendText(buf, col, value);
				return PROPERTY_WRITTEN;
			}
		case MONK_CAPTURE_NUMERIC:
			return AppendNumeric(buf, col, DatumGetNumeric(value), err);
		case MONK_CAPTURE_BOOL:
			appendStringInfoString(buf, DatumGetBool(value) ? "true" : "false");
			return PROPERTY_WRITTEN;
		case MONK_CAPTURE_JSONB:
			return AppendJsonb(buf, col, DatumGetJsonbP(value), err);
		case MONK_CAPTURE_JSON:
			return AppendJsonb(buf, col,
							   DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
																  CStringGetDatum(TextDatumGetCString(value)))),
							   err);
		case MONK_CAPTURE_TEXT:
			{
				text	   *t = DatumGetTextPP(value);

				if (!MonkEscapeJsonWithin(buf, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), MonkMaxEventBytes()))
					MonkEventCheckSize(-1);
				return PROPERTY_WRITTEN;
			}
		case MONK_CAPTURE_TIMESTAMPTZ:
			if (!MonkTimestampInIsoRange(DatumGetTimestampTz(value)))
			{
				MonkEventFail(err, NULL, psprintf("column \"%s\" is out of range", col->name),
							  pstrdup("Timestamps must be finite and between the years 1 and 9999."), NULL);
				return PROPERTY_REFUSED;
			}
			break;
		default:
			break;
	}
	/* a string: the value as text (timestamps in ISO 8601) */
	initStringInfo(&str);
	AppendText(&str, col, value);
	if (!MonkEscapeJsonWithin(buf, str.data, str.len, MonkMaxEventBytes()))
		MonkEventCheckSize(-1);
	pfree(str.data);
	return PROPERTY_WRITTEN;
}

/* The properties object; NULL columns (and JSON nulls) are left out. */
static bool
RenderColumnProperties(const MonkCaptureMap *map, TupleTableSlot *slot, StringInfo buf, MonkEventError *err)
{
	bool		first = true;

	appendStringInfoChar(buf, '{');
	for (int i = 0; i < map->nprops; i++)
	{
		const MonkCaptureProperty *prop = &map->props[i];
		int			mark = buf->len;
		Datum		value = 0;
		bool		isnull = false;
		PropertyValue result = PROPERTY_WRITTEN;

		if (prop->col.attnum)
			value = slot_getattr(slot, prop->col.attnum, &isnull);
		if (isnull)
			continue;
		if (!first)
			appendStringInfoChar(buf, ',');
		appendStringInfoString(buf, prop->label);
		if (prop->constant)
			appendStringInfoString(buf, prop->constant);
		else
			result = AppendValue(buf, &prop->col, value, err);
		if (result == PROPERTY_REFUSED)
			return false;
		if (result == PROPERTY_DROPPED)
		{
			buf->len = mark;
			buf->data[mark] = '\0';
			continue;
		}
		first = false;
	}
	appendStringInfoChar(buf, '}');
	return true;
}

/* Append a key value with ',' ':' and '\' escaped. */
static void
AppendKeyPart(StringInfo buf, const MonkCaptureColumn *col, Datum value)
{
	StringInfoData str;

	if (col->kind == MONK_CAPTURE_INT)
	{
		AppendText(buf, col, value);
		return;
	}
	initStringInfo(&str);
	AppendText(&str, col, value);
	for (int i = 0; i < str.len; i++)
	{
		if (str.data[i] == ',' || str.data[i] == ':' || str.data[i] == '\\')
			appendStringInfoChar(buf, '\\');
		appendStringInfoChar(buf, str.data[i]);
	}
	pfree(str.data);
}

/* The row's idempotency key: key=<column>, or prefix, table, primary key, event. */
static bool
RowKey(const MonkCaptureMap *map, TupleTableSlot *slot, StringInfo key, MonkEventError *err)
{
	resetStringInfo(key);
	if (map->key.attnum)
	{
		bool		isnull;
		Datum		value = slot_getattr(slot, map->key.attnum, &isnull);

		if (isnull)
			return MonkEventFail(err, NULL, psprintf("column \"%s\" (the key) is null", map->key.name), NULL,
								 pstrdup("Leave key= out to have the key derived from the primary key."));
		AppendText(key, &map->key, value);
		return true;
	}
	appendStringInfoString(key, MonkKeyPrefix(map->legacy_keys));
	appendStringInfoString(key, map->source);
	appendStringInfoChar(key, ':');
	for (int i = 0; i < map->npk; i++)
	{
		bool		isnull;
		Datum		value = slot_getattr(slot, map->pk[i].attnum, &isnull);

		if (i > 0)
			appendStringInfoChar(key, ',');
		if (!isnull)
			AppendKeyPart(key, &map->pk[i], value);
	}
	appendStringInfoChar(key, ':');
	appendStringInfoString(key, map->event_name);
	return true;
}

/* The event's timestamp from its column (timestamp and date in the session's zone). */
static TimestampTz
ToTimestamptz(const MonkCaptureColumn *col, Datum value)
{
	switch (col->kind)
	{
		case MONK_CAPTURE_TIMESTAMP:
			return DatumGetTimestampTz(DirectFunctionCall1(timestamp_timestamptz, value));
		case MONK_CAPTURE_DATE:
			return DatumGetTimestampTz(DirectFunctionCall1(date_timestamptz, value));
		default:
			return DatumGetTimestampTz(value);
	}
}

/* The customer: at least one of the mapped columns must hold a value. */
static bool
RowCustomer(const MonkCaptureMap *map, TupleTableSlot *slot, StringInfo buf, MonkEvent *ev,
			MonkEventError *err)
{
	bool		isnull;
	Datum		value;

	if (map->external.attnum)
	{
		value = slot_getattr(slot, map->external.attnum, &isnull);
		if (!isnull)
		{
			resetStringInfo(buf);
			AppendText(buf, &map->external, value);
			ev->external_customer_id = buf->data;
		}
	}
	if (map->customer.attnum)
	{
		value = slot_getattr(slot, map->customer.attnum, &isnull);
		if (!isnull)
			ev->customer_id = DatumGetUUIDP(value);
	}
	if (ev->external_customer_id || ev->customer_id)
		return true;
	return MonkEventFail(err, NULL,
						 map->external.attnum && map->customer.attnum ?
						 psprintf("columns \"%s\" and \"%s\" are both null", map->customer.name, map->external.name) :
						 psprintf("column \"%s\" is null",
								  map->external.attnum ? map->external.name : map->customer.name),
						 pstrdup("Every event needs a customer."),
						 pstrdup("Make the column NOT NULL, or leave such rows out with WHEN (...) in CREATE TRIGGER."));
}

/*
 * The event of a row, rendered into text->json as the JSON the API receives,
 * under the key in text->key.  False (and *err) when the row breaks a rule
 * of the API.
 */
static bool
RowEvent(const MonkCaptureMap *map, TupleTableSlot *slot, RowBuffers *bufs, TimestampTz now,
		 MonkEventError *err)
{
	MonkEvent	ev;

	memset(&ev, 0, sizeof(ev));
	ev.event_name = map->event_name;
	ev.idempotency_key = bufs->key.data;
	ev.names = &map->names;
	if (!RowCustomer(map, slot, &bufs->customer, &ev, err))
		return false;
	if (map->timestamp.attnum)
	{
		bool		isnull;
		Datum		value = slot_getattr(slot, map->timestamp.attnum, &isnull);

		ev.has_timestamp = !isnull;
		if (!isnull)
			ev.timestamp = ToTimestamptz(&map->timestamp, value);
	}
	if (!ev.has_timestamp)
	{
		ev.has_timestamp = true;
		ev.timestamp = GetCurrentTransactionStartTimestamp();
	}
	if (map->nprops > 0)
	{
		resetStringInfo(&bufs->props);
		if (!RenderColumnProperties(map, slot, &bufs->props, err))
			return false;
		ev.properties_json = bufs->props.data;
	}
	if (!MonkEventCheck(&ev, now, err))
		return false;
	resetStringInfo(&bufs->json);
	MonkEventCheckSize(MonkEventRender(&bufs->json, &ev, bufs->key.data, MonkMaxEventBytes()) ? bufs->json.len : -1);
	MonkEventCheckBytes(bufs->json.data, bufs->json.len);
	return true;
}

/* Make a row's buffers. */
static void
InitRowBuffers(RowBuffers *bufs)
{
	initStringInfo(&bufs->key);
	initStringInfo(&bufs->json);
	initStringInfo(&bufs->customer);
	initStringInfo(&bufs->props);
}

/* An UPDATE changed the primary key, from which the default key comes. */
static void
RaiseKeyChanged(const MonkCaptureMap *map, const char *old_key, const char *new_key)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("monk_capture cannot follow a change of the primary key of table \"%s\"", map->relname),
			 old_key ? errdetail("The event's key would change from \"%s\" to \"%s\", and the row would be billed twice.",
								 old_key, new_key)
			 : errdetail("An event's key would change (to \"%s\"), and its row would be billed twice.", new_key),
			 errhint("Do not update the primary key of a captured row, or pass 'key=<column>' naming a column that never changes.")));
}

/* ------------------------------------------------------------------------
 * Firing
 * ------------------------------------------------------------------------
 */

/* Queue one event: a fresh outbox id, the same wake-up as monk_send. */
static void
Queue(MonkOutboxAppender *ap, const RowBuffers *bufs, TimestampTz now)
{
	MonkOutboxAppend(ap, MonkOutboxNextId(), bufs->key.data, bufs->key.len, bufs->json.data, bufs->json.len, now);
}

/* FOR EACH ROW: the new row's event, unless an UPDATE left it as it was. */
static void
CaptureRow(const MonkCaptureMap *map, TriggerData *td)
{
	bool		update = TRIGGER_FIRED_BY_UPDATE(td->tg_event);
	TupleTableSlot *row = update ? td->tg_newslot : td->tg_trigslot;
	TimestampTz now = GetCurrentTimestamp();
	RowBuffers	bufs;
	MonkEventError err;
	MonkOutboxAppender *ap;

	InitRowBuffers(&bufs);
	if (!RowKey(map, row, &bufs.key, &err) || !RowEvent(map, row, &bufs, now, &err))
		MonkEventRaise(&err);
	if (update)
	{
		RowBuffers	old;

		InitRowBuffers(&old);
		if (RowKey(map, td->tg_trigslot, &old.key, &err))
		{
			if (map->key.attnum == 0 && strcmp(old.key.data, bufs.key.data) != 0)
				RaiseKeyChanged(map, old.key.data, bufs.key.data);
			if (RowEvent(map, td->tg_trigslot, &old, now, &err) &&
				strcmp(old.json.data, bufs.json.data) == 0)
				return;			/* nothing the event holds has changed */
		}
	}
	MonkOutboxCheckCapacity();
	ap = MonkOutboxAppendBegin(false);
	Queue(ap, &bufs, now);
	MonkOutboxAppendEnd(ap);
	MonkWakeWorkerAtCommit(1);
}

/* Start reading a transition table from its beginning with a pointer of our own. */
static void
StartReading(Tuplestorestate *rows)
{
	int			ptr = tuplestore_alloc_read_pointer(rows, 0);

	tuplestore_select_read_pointer(rows, ptr);
	tuplestore_rescan(rows);
}

typedef struct OldRow
{
	char	   *key;			/* hash key: the string it points to */
	char	   *json;			/* its event, or NULL if it had none */
} OldRow;

static uint32
OldRowHash(const void *key, Size keysize)
{
	const char *s = *(char *const *) key;

	return DatumGetUInt32(hash_any((const unsigned char *) s, strlen(s)));
}

static int
OldRowMatch(const void *a, const void *b, Size keysize)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* The events of the old rows of an UPDATE, by key. */
static HTAB *
IndexOldRows(const MonkCaptureMap *map, TriggerData *td, TupleTableSlot *slot, TimestampTz now)
{
	HASHCTL		ctl;
	HTAB	   *old;
	RowBuffers	bufs;
	MonkEventError err;

	ctl.keysize = sizeof(char *);
	ctl.entrysize = sizeof(OldRow);
	ctl.hash = OldRowHash;
	ctl.match = OldRowMatch;
	ctl.hcxt = CurrentMemoryContext;
	old = hash_create("monk_capture old rows", 1024, &ctl,
					  HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	InitRowBuffers(&bufs);
	StartReading(td->tg_oldtable);
	while (tuplestore_gettupleslot(td->tg_oldtable, true, false, slot))
	{
		char	   *k;
		OldRow	   *entry;
		bool		found;

		if (!RowKey(map, slot, &bufs.key, &err))
			continue;
		k = pstrdup(bufs.key.data);
		entry = hash_search(old, &k, HASH_ENTER, &found);
		entry->json = RowEvent(map, slot, &bufs, now, &err) ? pstrdup(bufs.json.data) : NULL;
	}
	tuplestore_select_read_pointer(td->tg_oldtable, 0);
	return old;
}

/*
 * FOR EACH STATEMENT: the new rows' events, read from the transition table
 * in one pass and appended with the segment opened once.
 */
static void
CaptureStatement(const MonkCaptureMap *map, TriggerData *td)
{
	bool		update = TRIGGER_FIRED_BY_UPDATE(td->tg_event);
	Tuplestorestate *rows = td->tg_newtable;
	TimestampTz now = GetCurrentTimestamp();
	TupleTableSlot *slot;
	MemoryContext rowcxt;
	HTAB	   *old;
	MonkOutboxAppender *ap;
	RowBuffers	bufs;
	int			queued = 0;

	if (tuplestore_tuple_count(rows) == 0)
		return;
	slot = MakeSingleTupleTableSlot(RelationGetDescr(td->tg_relation), &TTSOpsMinimalTuple);
	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "monk_capture row", ALLOCSET_DEFAULT_SIZES);
	old = update ? IndexOldRows(map, td, slot, now) : NULL;
	MonkOutboxCheckCapacity();
	ap = MonkOutboxAppendBegin(true);
	InitRowBuffers(&bufs);
	StartReading(rows);
	while (tuplestore_gettupleslot(rows, true, false, slot))
	{
		MemoryContext outer = MemoryContextSwitchTo(rowcxt);
		MonkEventError err;
		OldRow	   *prev = NULL;

		if (!RowKey(map, slot, &bufs.key, &err) || !RowEvent(map, slot, &bufs, now, &err))
			MonkEventRaise(&err);
		if (old)
		{
			char	   *k = bufs.key.data;

			prev = hash_search(old, &k, HASH_FIND, NULL);
			if (prev == NULL && map->key.attnum == 0)
				RaiseKeyChanged(map, NULL, bufs.key.data);
		}
		if (prev == NULL || prev->json == NULL || strcmp(prev->json, bufs.json.data) != 0)
		{
			Queue(ap, &bufs, now);
			queued++;
		}
		MemoryContextSwitchTo(outer);
		MemoryContextReset(rowcxt);
	}
	tuplestore_select_read_pointer(rows, 0);
	MonkOutboxAppendEnd(ap);
	ExecDropSingleTupleTableSlot(slot);
	MemoryContextDelete(rowcxt);
	if (queued > 0)
		MonkWakeWorkerAtCommit(queued);
}

/* Name the trigger and the table in the context of any error. */
static void
CaptureErrorContext(void *arg)
{
	TriggerData *td = (TriggerData *) arg;

	errcontext("monk_capture trigger \"%s\" on table \"%s\"",
			   td->tg_trigger->tgname, RelationGetRelationName(td->tg_relation));
}

/* monk_capture(event_name, option, ...): the trigger function. */
Datum
monk_capture(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	ErrorContextCallback context;
	const MonkCaptureMap *map;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("monk_capture must be called as a trigger"),
				 errhint("Use it in CREATE TRIGGER ... EXECUTE FUNCTION monk_capture('event_name', 'external_customer_id=<column>', ...).")));
	MonkRequirePreload();
	context.callback = CaptureErrorContext;
	context.arg = td;
	context.previous = error_context_stack;
	error_context_stack = &context;

	MonkCaptureCheckForm(td->tg_trigger->tgtype, td->tg_trigger->tgnewtable != NULL,
						 td->tg_trigger->tgoldtable != NULL, td->tg_trigger->tgname);
	map = MonkCaptureGetMap(td);
	if (TRIGGER_FIRED_FOR_ROW(td->tg_event))
		CaptureRow(map, td);
	else
		CaptureStatement(map, td);

	error_context_stack = context.previous;
	return PointerGetDatum(NULL);
}
