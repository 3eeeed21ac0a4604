/*
 * export.c
 *		monk_batch_export: the bulk ingestion guide done inside the database.
 *
 * The rows of a table or view with an id past the stored cursor are read in
 * id order, in bounded slices (an SPI cursor: memory stays flat whatever the
 * size of the source), validated, rendered with their idempotency key
 * (the row's, or monk.idempotency_prefix followed by the id) and handed to
 * the same sender as the worker's: parallel requests, backoff, bisection of
 * refused batches.  An invalid row or a refused event is dead-lettered with
 * its reason and never blocks the rest.  The cursor (monk.sync_state)
 * advances past every row accepted or dead-lettered, in id order: a batch
 * that still fails after its retries stops the export, and the cursor stays
 * before it so that the next run resumes there.
 *
 * The source is read with the caller's privileges; monk's own tables are
 * written as their owner, so that a role needs only EXECUTE on the function
 * and SELECT on its source.  The cursor row is locked for the whole export:
 * a second export of the same cursor fails at once.  Everything the export
 * records is part of the caller's transaction.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "event.h"
#include "export.h"
#include "sender.h"
#include "settings.h"

PG_FUNCTION_INFO_V1(monk_batch_export);

typedef struct SourceColumn
{
	const char *name;
	const char *expected;		/* for the error message */
	bool		required;
} SourceColumn;

static const SourceColumn source_columns[NCOLS] = {
	{"id", "bigint", true},
	{"event_name", "text", true},
	{"external_customer_id", "text", false},
	{"customer_id", "uuid or text", false},
	{"timestamp", "timestamp with time zone", false},
	{"properties", "jsonb or json", false},
	{"idempotency_key", "text", false},
};

/* A slice of the source on its way: the rows from first_id to last_id. */
typedef struct ExportSlice
{
	int64		first_id;
	int64		last_id;
	MonkChunk  *chunk;			/* NULL when no row of it was valid */
	bool		settled;
	bool		failed;
	dlist_node	node;
} ExportSlice;

typedef struct Export
{
	const char *cursor_name;
	int			batch_size;		/* rows per slice */
	Oid			monk_owner;		/* owner of monk's tables */
	MonkSender *sender;
	dlist_head	slices;			/* in id order, not yet behind the cursor */
	int			nslices_inflight;
	int64		cursor;			/* last id accepted or dead-lettered, in order */
	int			batches;
	int64		sent;
	int64		failed;
	bool		delivery_failed;
	long		auth_status;
	char		auth_body[MONK_RESPONSE_MAX + 1];
	SPIPlanPtr	plan_dead_letter;
} Export;

/* Run fn(arg) as the owner of monk's tables. */
static void
AsMonkOwner(Export *ex, void (*fn) (Export *, void *), void *arg)
{
	Oid			save_user;
	int			save_sec;

	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(ex->monk_owner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	fn(ex, arg);
	SetUserIdAndSecContext(save_user, save_sec);
}

typedef struct DeadLetter
{
	int64		id;
	const char *key;
	const char *event;
	int			status;			/* 0: refused before sending */
	const char *error;
	const char *response;
} DeadLetter;

static void
InsertDeadLetter(Export *ex, void *arg)
{
	DeadLetter *dl = arg;
	Oid			types[7] = {TEXTOID, INT8OID, TEXTOID, TEXTOID, INT4OID, TEXTOID, TEXTOID};
	Datum		values[7];
	char		nulls[7] = {' ', ' ', ' ', ' ', ' ', ' ', ' '};
	int			ret;

	if (ex->plan_dead_letter == NULL)
	{
		ex->plan_dead_letter =
			SPI_prepare("INSERT INTO monk.dead_letter (source, source_id, idempotency_key, event,"
						" http_status, error, response_body, attempts)"
						" VALUES ($1, $2, $3, $4, $5, $6, $7, 1)", 7, types);
		if (ex->plan_dead_letter == NULL)
			elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	}
	values[0] = CStringGetTextDatum(ex->cursor_name);
	values[1] = Int64GetDatum(dl->id);
	values[2] = CStringGetTextDatum(dl->key);
	values[3] = CStringGetTextDatum(dl->event);
	values[4] = Int32GetDatum(dl->status);
	nulls[4] = dl->status ? ' ' : 'n';
	values[5] = CStringGetTextDatum(dl->error);
	if (dl->response && dl->response[0])
		values[6] = CStringGetTextDatum(dl->response);
	else
		nulls[6] = 'n';
	ret = SPI_execute_plan(ex->plan_dead_letter, values, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "inserting into monk.dead_letter failed: %s", SPI_result_code_string(ret));
}

static void
DeadLetterRow(Export *ex, DeadLetter *dl)
{
	AsMonkOwner(ex, InsertDeadLetter, dl);
	ex->failed++;
}

static void
SaveCursor(Export *ex, void *arg)
{
	Oid			types[5] = {TEXTOID, INT8OID, INT8OID, INT8OID, TEXTOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	const char *error = arg;
	int			ret;

	values[0] = CStringGetTextDatum(ex->cursor_name);
	values[1] = Int64GetDatum(ex->cursor);
	values[2] = Int64GetDatum(ex->sent);
	values[3] = Int64GetDatum(ex->failed);
	if (error)
		values[4] = CStringGetTextDatum(error);
	else
		nulls[4] = 'n';
	ret = SPI_execute_with_args("UPDATE monk.sync_state SET last_id = $2, events_sent = events_sent + $3,"
								" events_failed = events_failed + $4, last_run_at = now(), last_error = $5,"
								" updated_at = now() WHERE cursor_name = $1",
								5, types, values, nulls, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "updating monk.sync_state failed: %s", SPI_result_code_string(ret));
}

/* Move the cursor past the settled slices at the front, in id order. */
static void
AdvanceCursor(Export *ex)
{
	while (!dlist_is_empty(&ex->slices))
	{
		ExportSlice *slice = dlist_head_element(ExportSlice, node, &ex->slices);

		if (!slice->settled || slice->failed)
			break;
		ex->cursor = slice->last_id;
		dlist_delete(&slice->node);
		if (slice->chunk)
			MonkChunkFree(slice->chunk);
		pfree(slice);
	}
}

static void
OnAccepted(void *arg, MonkBatch *batch)
{
	Export	   *ex = arg;

	ex->sent += batch->count;
}

static void
OnRefused(void *arg, MonkBatch *batch, long status, const char *body)
{
	Export	   *ex = arg;
	MonkChunk  *chunk = batch->chunk;
	int			i = batch->start;
	DeadLetter	dl;
	char	   *event = pnstrdup(chunk->data.data + chunk->off[i], chunk->len[i]);
	Jsonb	   *jb;
	JsonbValue *key;

	/* the key is in the rendered event */
	jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(event)));
	key = getKeyJsonValueFromContainer(&jb->root, "idempotencyKey", strlen("idempotencyKey"), NULL);

	dl.id = chunk->ids[i];
	dl.key = key ? pnstrdup(key->val.string.val, key->val.string.len) : "";
	dl.event = event;
	dl.status = (int) status;
	dl.error = psprintf("refused by the Events API (HTTP %ld)", status);
	dl.response = body;
	DeadLetterRow(ex, &dl);
}

static bool
OnParked(void *arg, MonkBatch *batch, long status, const char *error)
{
	Export	   *ex = arg;
	ExportSlice *slice = batch->chunk->arg;

	slice->failed = true;
	ex->delivery_failed = true;
	ereport(WARNING,
			(errmsg("monk_batch_export: a batch of %d events failed %d times; the export stops before it",
					batch->count, batch->attempts),
			 errdetail("Last error: %s", error),
			 errhint("The cursor stays before this batch: the next run resumes there, and the keys make any event sent twice count once.")));
	return false;
}

static void
OnAuthFailed(void *arg, MonkBatch *batch, long status, const char *body)
{
	Export	   *ex = arg;

	ex->auth_status = status;
	strlcpy(ex->auth_body, body ? body : "", sizeof(ex->auth_body));
}

static void
OnChunkDone(void *arg, MonkChunk *chunk)
{
	Export	   *ex = arg;
	ExportSlice *slice = chunk->arg;

	slice->settled = true;
	ex->nslices_inflight--;
	AdvanceCursor(ex);
}

static const MonkSenderOps export_ops = {
	OnAccepted, OnRefused, OnParked, OnAuthFailed, OnChunkDone
};

/* Is the type one of the text types (text, varchar, char, name)? */
static bool
IsTextType(Oid type)
{
	return type == TEXTOID || type == VARCHAROID || type == BPCHAROID || type == NAMEOID;
}

/*
 * Find the columns of the source by name and check their types; build the
 * query that reads it past an id ($1), in id order, one column per
 * MonkSourceColumn (NULL where the source has none).
 */
char *
MonkSourceQuery(Oid relid, int64 max_events, int *positions)
{
	Relation	rel = relation_open(relid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	char	   *relname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
													 RelationGetRelationName(rel));
	StringInfoData q;

	for (int c = 0; c < NCOLS; c++)
		positions[c] = 0;
	for (int a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);

		if (att->attisdropped)
			continue;
		for (int c = 0; c < NCOLS; c++)
		{
			Oid			t = att->atttypid;
			bool		ok;

			if (strcmp(NameStr(att->attname), source_columns[c].name) != 0)
				continue;
			switch (c)
			{
				case COL_ID:
					ok = (t == INT8OID || t == INT4OID || t == INT2OID);
					break;
				case COL_CUSTOMER_ID:
					ok = (t == UUIDOID || IsTextType(t));
					break;
				case COL_TIMESTAMP:
					ok = (t == TIMESTAMPTZOID);
					break;
				case COL_PROPERTIES:
					ok = (t == JSONBOID || t == JSONOID);
					break;
				default:
					ok = IsTextType(t);
					break;
			}
			if (!ok)
				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("column \"%s\" of %s must be of type %s, not %s",
								source_columns[c].name, relname, source_columns[c].expected,
								format_type_be(t)),
						 c == COL_TIMESTAMP ?
						 errhint("Convert it in a view, for example \"timestamp\" AT TIME ZONE 'UTC' AS \"timestamp\".") :
						 errhint("Cast it in a view over the source.")));
			positions[c] = a + 1;
		}
	}
	relation_close(rel, AccessShareLock);

	for (int c = 0; c < NCOLS; c++)
	{
		if (source_columns[c].required && positions[c] == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("%s has no column \"%s\" (%s)", relname, source_columns[c].name,
							source_columns[c].expected),
					 errhint("Columns are mapped by name: id, event_name, external_customer_id or customer_id, and optionally timestamp, properties and idempotency_key. A view can rename them.")));
	}
	if (positions[COL_EXTERNAL_ID] == 0 && positions[COL_CUSTOMER_ID] == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("%s has neither an \"external_customer_id\" nor a \"customer_id\" column", relname),
				 errhint("Columns are mapped by name; a view can rename yours.")));

	initStringInfo(&q);
	appendStringInfoString(&q, "SELECT id::bigint");
	for (int c = COL_EVENT_NAME; c < NCOLS; c++)
	{
		const char *cast = (c == COL_PROPERTIES) ? "jsonb" : (c == COL_TIMESTAMP) ? "timestamptz" : "text";

		if (positions[c])
			appendStringInfo(&q, ", %s::%s", quote_identifier(source_columns[c].name), cast);
		else
			appendStringInfo(&q, ", NULL::%s", cast);
	}
	appendStringInfo(&q, " FROM %s WHERE id > $1 ORDER BY id", relname);
	if (max_events > 0)
		appendStringInfo(&q, " LIMIT " INT64_FORMAT, max_events);
	return q.data;
}

/* A JSON rendering of an invalid row, for the dead letters. */
static char *
RowJson(int64 id, MonkEvent *ev, const char *customer_text)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"id\":" INT64_FORMAT, id);
	if (ev->event_name)
	{
		appendStringInfoString(&buf, ",\"event_name\":");
		MonkEscapeJson(&buf, ev->event_name, strlen(ev->event_name));
	}
	if (ev->external_customer_id)
	{
		appendStringInfoString(&buf, ",\"external_customer_id\":");
		MonkEscapeJson(&buf, ev->external_customer_id, strlen(ev->external_customer_id));
	}
	if (customer_text)
	{
		appendStringInfoString(&buf, ",\"customer_id\":");
		MonkEscapeJson(&buf, customer_text, strlen(customer_text));
	}
	if (ev->has_timestamp && !TIMESTAMP_NOT_FINITE(ev->timestamp))
	{
		char	   *ts = DatumGetCString(DirectFunctionCall1(timestamptz_out,
															 TimestampTzGetDatum(ev->timestamp)));

		appendStringInfoString(&buf, ",\"timestamp\":");
		MonkEscapeJson(&buf, ts, strlen(ts));
	}
	if (ev->properties)
	{
		appendStringInfoString(&buf, ",\"properties\":");
		appendStringInfoString(&buf, JsonbToCString(NULL, &ev->properties->root, VARSIZE(ev->properties)));
	}
	if (ev->idempotency_key)
	{
		appendStringInfoString(&buf, ",\"idempotency_key\":");
		MonkEscapeJson(&buf, ev->idempotency_key, strlen(ev->idempotency_key));
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/*
 * Turn the rows of the current SPI tuptable into a slice: valid rows into
 * its chunk, invalid ones to the dead letters.
 */
static ExportSlice *
MakeSlice(Export *ex, MemoryContext cxt, TimestampTz now)
{
	SPITupleTable *tt = SPI_tuptable;
	uint64		n = SPI_processed;
	ExportSlice *slice = MemoryContextAllocZero(cxt, sizeof(ExportSlice));
	MemoryContext rowcxt = AllocSetContextCreate(CurrentMemoryContext, "monk export row",
												 ALLOCSET_DEFAULT_SIZES);
	MemoryContext old = MemoryContextSwitchTo(rowcxt);

	slice->chunk = MonkChunkCreate(cxt, (int) n);
	slice->chunk->arg = slice;
	for (uint64 r = 0; r < n; r++)
	{
		HeapTuple	tuple = tt->vals[r];
		TupleDesc	desc = tt->tupdesc;
		bool		isnull;
		Datum		d;
		MonkEvent	ev;
		MonkEventError err;
		int64		id;
		char	   *customer_text = NULL;
		const char *key;
		pg_uuid_t  *uuid = NULL;
		bool		valid = true;
		StringInfoData json;

		/* what a row needs lives until the next row: memory stays flat */
		MemoryContextReset(rowcxt);
		memset(&ev, 0, sizeof(ev));
		ev.naming = MONK_NAMES_COLUMNS;
		d = SPI_getbinval(tuple, desc, 1, &isnull);
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("the source has a row whose id is NULL"),
					 errhint("Every row needs an id: it is the export's cursor and key.")));
		id = DatumGetInt64(d);
		if (r == 0)
			slice->first_id = id;
		slice->last_id = id;

		ev.event_name = SPI_getvalue(tuple, desc, 2);
		ev.external_customer_id = SPI_getvalue(tuple, desc, 3);
		customer_text = SPI_getvalue(tuple, desc, 4);
		d = SPI_getbinval(tuple, desc, 5, &isnull);
		if (!isnull)
		{
			ev.has_timestamp = true;
			ev.timestamp = DatumGetTimestampTz(d);
		}
		d = SPI_getbinval(tuple, desc, 6, &isnull);
		if (!isnull)
			ev.properties = DatumGetJsonbP(d);
		ev.idempotency_key = SPI_getvalue(tuple, desc, 7);
		key = ev.idempotency_key ? ev.idempotency_key
			: psprintf("%s" INT64_FORMAT, monk_idempotency_prefix, id);

		if (customer_text)
		{
			uuid = palloc(sizeof(pg_uuid_t));
			if (MonkParseUuid(customer_text, uuid))
				ev.customer_id = uuid;
			else
			{
				valid = false;
				err.message = "customer_id must be a UUID";
				err.detail = psprintf("The value is \"%s\".", customer_text);
				err.hint = NULL;
			}
		}
		if (valid && !MonkEventCheck(&ev, now, &err))
			valid = false;

		if (!valid)
		{
			DeadLetter	dl;

			dl.id = id;
			dl.key = key;
			dl.event = RowJson(id, &ev, customer_text);
			dl.status = 0;
			dl.error = err.detail ? psprintf("invalid event: %s (%s)", err.message, err.detail)
				: psprintf("invalid event: %s", err.message);
			dl.response = NULL;
			DeadLetterRow(ex, &dl);
			continue;
		}

		initStringInfo(&json);
		MonkEventRender(&json, &ev, key);
		MonkChunkAdd(slice->chunk, id, json.data, json.len, now);
	}
	MemoryContextSwitchTo(old);
	MemoryContextDelete(rowcxt);
	if (slice->chunk->n == 0)
	{
		MonkChunkFree(slice->chunk);
		slice->chunk = NULL;
		slice->settled = true;
	}
	return slice;
}

/* Lock the cursor row (creating it) and return the stored position. */
typedef struct CursorLock
{
	const char *source;
	int64		last_id;
} CursorLock;

static void
LockCursor(Export *ex, void *arg)
{
	CursorLock *cl = arg;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	int			ret;
	bool		isnull;

	values[0] = CStringGetTextDatum(ex->cursor_name);
	values[1] = CStringGetTextDatum(cl->source);
	ret = SPI_execute_with_args("INSERT INTO monk.sync_state (cursor_name, source) VALUES ($1, $2)"
								" ON CONFLICT (cursor_name) DO NOTHING",
								2, types, values, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "inserting into monk.sync_state failed: %s", SPI_result_code_string(ret));

	PG_TRY();
	{
		ret = SPI_execute_with_args("SELECT last_id FROM monk.sync_state WHERE cursor_name = $1"
									" FOR UPDATE NOWAIT",
									1, types, values, NULL, false, 0);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(TopTransactionContext);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
			PG_RE_THROW();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("another monk_batch_export of cursor \"%s\" is running", ex->cursor_name),
				 errhint("Exports of one cursor run one at a time; this one sent nothing. Try again when the other has finished.")));
	}
	PG_END_TRY();
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "reading monk.sync_state failed");
	cl->last_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
}

/* The owner of monk's tables (the extension's tables are all one owner's). */
static Oid
MonkOwner(void)
{
	Oid			nsp = get_namespace_oid("monk", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("sync_state", nsp) : InvalidOid;
	HeapTuple	tp;
	Oid			owner;

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("monk.sync_state does not exist in this database"),
				 errhint("Run CREATE EXTENSION monk in this database.")));
	tp = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tp))
		elog(ERROR, "cache lookup failed for relation %u", relid);
	owner = ((Form_pg_class) GETSTRUCT(tp))->relowner;
	ReleaseSysCache(tp);
	return owner;
}

/*
 * Check the source of an export or a verification: given, a table or view,
 * readable by the caller.  Returns it.
 */
Oid
MonkCheckSource(Oid source)
{
	char		relkind;
	AclResult	acl;

	if (!OidIsValid(source))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("source must not be NULL"),
				 errhint("Name the table or view to export, for example 'billing_events'.")));
	relkind = get_rel_relkind(source);
	if (relkind == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", source)));
	if (relkind != RELKIND_RELATION && relkind != RELKIND_VIEW && relkind != RELKIND_MATVIEW &&
		relkind != RELKIND_FOREIGN_TABLE && relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table or a view", get_rel_name(source)),
				 errhint("Sources are tables, views, materialized views and foreign tables.")));
	acl = pg_class_aclcheck(source, GetUserId(), ACL_SELECT);
	if (acl != ACLCHECK_OK)
		aclcheck_error(acl, get_relkind_objtype(relkind), get_rel_name(source));
	return source;
}

/*
 * Read the source slice by slice, keeping up to monk.max_parallel_requests
 * slices in flight, until the source is exhausted, a batch fails for good or
 * the API refuses the key.
 */
static void
ExportLoop(Export *ex, Portal portal, MemoryContext cxt)
{
	TimestampTz last_notice = GetCurrentTimestamp();
	bool		source_done = false;
	int64		read = 0;

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();

		/* read the next slice while there is room for it */
		while (!source_done && !ex->delivery_failed && ex->auth_status == 0 &&
			   ex->nslices_inflight < monk_max_parallel_requests)
		{
			ExportSlice *slice;

			SPI_cursor_fetch(portal, true, ex->batch_size);
			if (SPI_processed == 0)
			{
				source_done = true;
				break;
			}
			read += SPI_processed;
			slice = MakeSlice(ex, cxt, GetCurrentTimestamp());
			SPI_freetuptable(SPI_tuptable);
			dlist_push_tail(&ex->slices, &slice->node);
			if (slice->chunk)
			{
				ex->nslices_inflight++;
				ex->batches++;
				MonkSenderSubmit(ex->sender, slice->chunk);
			}
			AdvanceCursor(ex);
		}

		if (ex->nslices_inflight == 0 &&
			(source_done || ex->delivery_failed || ex->auth_status != 0))
			break;
		if (ex->auth_status != 0 && ex->sender->inflight == 0)
			break;

		MonkSenderDispatch(ex->sender);
		MonkSenderWait(ex->sender, MonkSenderNextWakeMs(ex->sender), PG_WAIT_EXTENSION);

		if (TimestampDifferenceExceeds(last_notice, GetCurrentTimestamp(), 10000))
		{
			last_notice = GetCurrentTimestamp();
			ereport(NOTICE,
					(errmsg("monk_batch_export: " INT64_FORMAT " rows read, " INT64_FORMAT " events sent, " INT64_FORMAT " failed, cursor at " INT64_FORMAT,
							read, ex->sent, ex->failed, ex->cursor)));
		}
	}
}

/*
 * monk_batch_export(source regclass, batch_size int, max_events bigint,
 *                   cursor_name text)
 *   RETURNS TABLE (batches int, events_sent bigint, events_failed bigint,
 *                  last_id bigint, elapsed interval)
 */
Datum
monk_batch_export(PG_FUNCTION_ARGS)
{
	Oid			source;
	int			batch_size = PG_ARGISNULL(1) ? monk_batch_size : PG_GETARG_INT32(1);
	int64		max_events = PG_ARGISNULL(2) ? 0 : PG_GETARG_INT64(2);
	TimestampTz started = GetCurrentTimestamp();
	Export		ex;
	CursorLock	cl;
	char	   *query;
	int			positions[NCOLS];
	Portal		portal;
	Oid			argtypes[1] = {INT8OID};
	Datum		args[1];
	SPIPlanPtr	plan;
	MemoryContext cxt;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	source = MonkCheckSource(PG_ARGISNULL(0) ? InvalidOid : PG_GETARG_OID(0));
	if (batch_size < 1 || batch_size > MONK_MAX_BATCH_SIZE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch_size must be between 1 and %d", MONK_MAX_BATCH_SIZE),
				 errdetail("The value is %d.", batch_size),
				 errhint("The Events API takes at most %d events per request.", MONK_MAX_BATCH_SIZE)));
	if (!PG_ARGISNULL(2) && max_events < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_events must be at least 1"),
				 errdetail("The value is " INT64_FORMAT ".", max_events),
				 errhint("Pass NULL to export everything past the cursor.")));

	memset(&ex, 0, sizeof(ex));
	ex.batch_size = batch_size;
	if (PG_ARGISNULL(3))
		ex.cursor_name = quote_qualified_identifier(get_namespace_name(get_rel_namespace(source)),
													get_rel_name(source));
	else
		ex.cursor_name = text_to_cstring(PG_GETARG_TEXT_PP(3));
	if (ex.cursor_name[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cursor_name must not be empty"),
				 errhint("Pass NULL to use the source's qualified name.")));
	InitMaterializedSRF(fcinfo, 0);

	query = MonkSourceQuery(source, max_events, positions);
	ex.monk_owner = MonkOwner();
	dlist_init(&ex.slices);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	cl.source = quote_qualified_identifier(get_namespace_name(get_rel_namespace(source)),
										   get_rel_name(source));
	AsMonkOwner(&ex, LockCursor, &cl);
	ex.cursor = cl.last_id;

	plan = SPI_prepare(query, 1, argtypes);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", query, SPI_result_code_string(SPI_result));
	args[0] = Int64GetDatum(cl.last_id);
	portal = SPI_cursor_open(NULL, plan, args, NULL, true);

	cxt = AllocSetContextCreate(CurrentMemoryContext, "monk_batch_export", ALLOCSET_DEFAULT_SIZES);
	ex.sender = MonkSenderCreate(&export_ops, &ex, NULL);

	PG_TRY();
	{
		ExportLoop(&ex, portal, cxt);
	}
	PG_CATCH();
	{
		MonkSenderDestroy(ex.sender);
		PG_RE_THROW();
	}
	PG_END_TRY();
	MonkSenderDestroy(ex.sender);
	SPI_cursor_close(portal);

	if (ex.auth_status != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("the Events API refused the API key (HTTP %ld)", ex.auth_status),
				 errdetail("The answer was: %.200s", ex.auth_body),
				 errhint("Set monk.api_key to a valid key and reload the configuration; nothing was dead-lettered, and the next run starts from the stored cursor.")));

	AsMonkOwner(&ex, SaveCursor, ex.delivery_failed ? (void *) "a batch failed after its retries" : NULL);
	SPI_finish();

	values[0] = Int32GetDatum(ex.batches);
	values[1] = Int64GetDatum(ex.sent);
	values[2] = Int64GetDatum(ex.failed);
	values[3] = Int64GetDatum(ex.cursor);
	values[4] = DirectFunctionCall2(timestamp_mi, TimestampTzGetDatum(GetCurrentTimestamp()),
									TimestampTzGetDatum(started));
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}
