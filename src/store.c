/*
 * store.c
 *		monk's tables besides the outbox: the dead letters, of the worker and
 *		of monk_batch_export, and the cursors of the exports.
 *
 * Every statement here runs as the owner of monk's tables, so that neither
 * the worker nor a role calling monk_batch_export needs rights on them (the
 * owner's rights, switched for the statement and restored by an error's
 * abort as well).  The caller has connected SPI.  This file, outbox.c and
 * outbox_consumer.c are the only ones that write monk's tables.
 */
#include "postgres.h"

#include "mb/pg_wchar.h"

#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "outbox.h"
#include "http.h"
#include "store.h"
#include "xact.h"

/* The kept plan of the dead-letter statement (the worker's, repeated). */
static SPIPlanPtr plan_dead_letter = NULL;
static SPIPlanPtr plan_supersede = NULL;

/* The owner of monk's tables (the extension's tables are all one owner's). */
static Oid
TablesOwner(void)
{
	Oid			relid = MonkTableOid("sync_state");
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
 * Run fn(arg) as the owner of monk's tables, under the safe search_path (the
 * caller's could otherwise choose the functions and operators that run with
 * the owner's rights); an error restores the user and the search_path.
 */
static void
AsOwner(void (*fn) (void *), void *arg)
{
	Oid			save_user;
	int			save_sec;
	int			nest_level;

	GetUserIdAndSecContext(&save_user, &save_sec);
	SetUserIdAndSecContext(TablesOwner(), save_sec | SECURITY_LOCAL_USERID_CHANGE);
	nest_level = MonkSafeSearchPathPush();
	fn(arg);
	MonkSafeSearchPathPop(nest_level);
	SetUserIdAndSecContext(save_user, save_sec);
}

static void
InsertDeadLetter(void *arg)
{
	const MonkDeadLetter *dl = arg;
	Oid			types[9] = {
		TEXTOID, INT8OID, TEXTOID, TEXTOID, TIMESTAMPTZOID, INT4OID, TEXTOID,
		TEXTOID, INT4OID
	};
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};

	MonkPlanKeep(&plan_dead_letter,
				 "INSERT INTO monk.dead_letter (source, source_id, idempotency_key, event, queued_at,"
				 "        http_status, error, response_body, attempts)"
				 " SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 + CASE WHEN $1 = 'outbox'"
				 "        THEN coalesce((SELECT attempts FROM monk.outbox_attempts WHERE id = $2), 0) ELSE 0 END"
				 " ON CONFLICT (source_id) WHERE source = 'outbox' DO NOTHING",
				 9, types);
	values[0] = CStringGetTextDatum(dl->source);
	values[1] = Int64GetDatum(dl->source_id);
	values[2] = PointerGetDatum(cstring_to_text_with_len(dl->key, dl->key_len > 0 ? dl->key_len : strlen(dl->key)));
	{
		int			len = dl->event_len > 0 ? dl->event_len : strlen(dl->event);
		const char *event = dl->event_utf8 ? pg_any_to_server(dl->event, len, PG_UTF8) : dl->event;

		if (event != dl->event)
			len = strlen(event);
		values[3] = PointerGetDatum(cstring_to_text_with_len(event, len));
	}
	values[4] = TimestampTzGetDatum(dl->queued_at);
	nulls[4] = dl->queued_at ? ' ' : 'n';
	values[5] = Int32GetDatum((int32) dl->status);
	nulls[5] = dl->has_status ? ' ' : 'n';
	values[6] = CStringGetTextDatum(dl->error);
	values[7] = (dl->response && dl->response[0]) ? CStringGetTextDatum(MonkTextForDatabase(dl->response)) : (Datum) 0;
	nulls[7] = (dl->response && dl->response[0]) ? ' ' : 'n';
	values[8] = Int32GetDatum(dl->attempts);
	MonkPlanRun(plan_dead_letter, values, nulls, false, SPI_OK_INSERT, "dead-lettering an event");
}

/*
 * Record an event refused for good in monk.dead_letter: one the Events API
 * refused (with its answer), or an export's row that is not a valid event.
 * An outbox event is recorded once: a refusal seen again after a restart
 * adds nothing, and its attempts count the parked ones.
 */
void
MonkDeadLetterInsert(const MonkDeadLetter *dl)
{
	AsOwner(InsertDeadLetter, (void *) dl);
}

static void
ReadDeadLettersOfOutbox(void *arg)
{
	bool		isnull;
	Oid			relid = MonkTableOid("dead_letter");

	/* before ALTER EXTENSION monk UPDATE to 0.4: nothing to mark */
	if (!OidIsValid(relid) || get_attnum(relid, "superseded_id") == InvalidAttrNumber)
		return;
	if (SPI_execute("SELECT EXISTS (SELECT FROM monk.dead_letter WHERE source = 'outbox'"
					" AND superseded_id IS NULL)", true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "reading monk.dead_letter failed");
	*(bool *) arg = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
}

/* Does monk.dead_letter hold outbox events that no newer version replaced? */
bool
MonkDeadLettersOfOutbox(void)
{
	bool		any = false;

	AsOwner(ReadDeadLettersOfOutbox, &any);
	return any;
}

typedef struct SupersedeArgs
{
	const char *const *keys;
	const int  *key_lens;
	const int64 *ids;
	int			n;
} SupersedeArgs;

static void
SupersedeDeadLetters(void *arg)
{
	SupersedeArgs *a = arg;
	Oid			types[2] = {TEXTARRAYOID, INT8ARRAYOID};
	Datum		values[2];
	Datum	   *keys = palloc(sizeof(Datum) * Max(a->n, 1));
	Datum	   *ids = palloc(sizeof(Datum) * Max(a->n, 1));

	for (int i = 0; i < a->n; i++)
	{
		keys[i] = PointerGetDatum(cstring_to_text_with_len(a->keys[i], a->key_lens[i]));
		ids[i] = Int64GetDatum(a->ids[i]);
	}
	values[0] = PointerGetDatum(construct_array(keys, a->n, TEXTOID, -1, false, TYPALIGN_INT));
	values[1] = PointerGetDatum(construct_array(ids, a->n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL,
												TYPALIGN_DOUBLE));
	/* a dead letter a session holds locked is left (the worker never waits) */
	MonkPlanKeep(&plan_supersede,
				 "WITH l AS (SELECT d.id, a.id AS newer FROM monk.dead_letter d"
				 "             JOIN ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[]),"
				 "                             pg_catalog.unnest($2::pg_catalog.int8[])) AS a(key, id)"
				 "               ON d.idempotency_key = a.key"
				 "            WHERE d.source = 'outbox' AND d.source_id < a.id AND d.superseded_id IS NULL"
				 "              FOR UPDATE OF d SKIP LOCKED)"
				 " UPDATE monk.dead_letter d SET superseded_id = l.newer FROM l WHERE d.id = l.id",
				 2, types);
	MonkPlanRun(plan_supersede, values, NULL, false, SPI_OK_UPDATE, "marking superseded dead letters");
}

/*
 * The API accepted these versions: a dead letter of an older version of
 * their keys is superseded, and monk_retry_dead_letters never queues it
 * again (it would replace the newer version at the API).
 */
void
MonkDeadLetterSupersede(const char *const *keys, const int *key_lens, const int64 *ids, int n)
{
	SupersedeArgs a = {keys, key_lens, ids, n};

	AsOwner(SupersedeDeadLetters, &a);
}

/* Another export of the cursor runs: fail at once, having sent nothing. */
pg_noreturn static void
CursorBusy(const char *cursor)
{
	ereport(ERROR,
			(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
			 errmsg("another monk_batch_export of cursor \"%s\" is running", cursor),
			 errhint("Exports of one cursor run one at a time; this one sent nothing. Try again when the other has finished.")));
}

typedef struct CursorArgs
{
	const char *cursor;
	const char *source;
	MonkCursorPos *pos;
	int64		sent;
	int64		failed;
	const char *error;
} CursorArgs;

static void
LockCursor(void *arg)
{
	CursorArgs *c = arg;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2] = {CStringGetTextDatum(c->cursor), CStringGetTextDatum(c->source)};
	bool		isnull;
	int			ret;

	/*
	 * First a lock of the cursor's name, tried without waiting: the row of a
	 * new cursor, inserted by a running export and not yet committed, would
	 * make the insert below wait for that export instead of failing.
	 */
	ret = SPI_execute_with_args("SELECT pg_catalog.pg_try_advisory_xact_lock("
								"pg_catalog.hashtext('monk_batch_export'), pg_catalog.hashtext($1))",
								1, types, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "locking the cursor failed");
	if (!DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)))
		CursorBusy(c->cursor);

	/* a new cursor of a source 0.3 exported keeps 0.3's keys (keys.c) */
	ret = SPI_execute_with_args("INSERT INTO monk.sync_state (cursor_name, source, legacy_keys)"
								" VALUES ($1, $2, EXISTS (SELECT FROM monk.export_legacy WHERE source = $2))"
								" ON CONFLICT (cursor_name) DO NOTHING", 2, types, values, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "inserting into monk.sync_state failed: %s", SPI_result_code_string(ret));
	PG_TRY();
	{
		ret = SPI_execute_with_args("SELECT last_id, pending_ids, legacy_keys FROM monk.sync_state WHERE cursor_name = $1"
									" FOR UPDATE NOWAIT", 1, types, values, NULL, false, 0);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(TopTransactionContext);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
			PG_RE_THROW();
		FlushErrorState();
		CursorBusy(c->cursor);
	}
	PG_END_TRY();
	if (ret != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "reading monk.sync_state failed");
	{
		HeapTuple	tuple = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		Datum		last = SPI_getbinval(tuple, desc, 1, &isnull);
		Datum		pending;
		Datum	   *elems;
		bool	   *enulls;
		int			n;

		c->pos->started = !isnull;
		c->pos->last_id = isnull ? 0 : DatumGetInt64(last);
		c->pos->legacy_keys = DatumGetBool(SPI_getbinval(tuple, desc, 3, &isnull)) && !isnull;
		pending = SPI_getbinval(tuple, desc, 2, &isnull);
		c->pos->npending = 0;
		c->pos->pending = NULL;
		if (!isnull)
		{
			deconstruct_array(DatumGetArrayTypeP(pending), INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
							  &elems, &enulls, &n);
			c->pos->pending = palloc(sizeof(int64) * Max(n, 1));
			for (int i = 0; i < n; i++)
			{
				if (!enulls[i])
					c->pos->pending[c->pos->npending++] = DatumGetInt64(elems[i]);
			}
		}
	}
}

typedef struct LegacyArgs
{
	const char *source;
	bool		legacy;
} LegacyArgs;

static void
ReadLegacyKeys(void *arg)
{
	LegacyArgs *a = arg;
	Oid			types[1] = {TEXTOID};
	Datum		values[1] = {CStringGetTextDatum(a->source)};
	bool		isnull;

	if (SPI_execute_with_args("SELECT coalesce((SELECT legacy_keys FROM monk.sync_state WHERE source = $1"
							  "                 ORDER BY cursor_name = $1 DESC, legacy_keys DESC LIMIT 1),"
							  "                EXISTS (SELECT FROM monk.export_legacy WHERE source = $1))",
							  1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading monk.sync_state failed");
	a->legacy = SPI_processed == 1 &&
		DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) && !isnull;
}

/*
 * Does the export of source (by name) keep 0.3's default keys?  Its cursor
 * named after it says so, or else any of its cursors; none: whether 0.3
 * exported it.  Inside SPI.
 */
bool
MonkSourceLegacyKeys(const char *source)
{
	LegacyArgs	a = {source, false};

	AsOwner(ReadLegacyKeys, &a);
	return a.legacy;
}

/*
 * Lock an export's cursor for the rest of the transaction (creating it for
 * source) and say where it stands (in the caller's memory context); another
 * export of it running fails this one at once (55P03).
 */
void
MonkCursorLock(const char *cursor, const char *source, MonkCursorPos *pos)
{
	CursorArgs	c = {cursor, source, pos, 0, 0, NULL};
	MemoryContext cxt = CurrentMemoryContext;
	Oid			relid = MonkTableOid("sync_state");

	/* the library is newer than the tables until ALTER EXTENSION ... UPDATE */
	if (OidIsValid(relid) && get_attnum(relid, "legacy_keys") == InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("monk's tables in this database are older than its library"),
				 errdetail("monk_batch_export needs the cursors of monk 0.4 (monk.sync_state); nothing was sent."),
				 errhint("Run ALTER EXTENSION monk UPDATE in this database.")));
	AsOwner(LockCursor, &c);
	/* the pending ids were read in SPI's memory */
	if (pos->pending)
	{
		int64	   *copy = MemoryContextAlloc(cxt, sizeof(int64) * Max(pos->npending, 1));

		memcpy(copy, pos->pending, sizeof(int64) * pos->npending);
		pos->pending = copy;
	}
}

static void
SaveCursor(void *arg)
{
	CursorArgs *c = arg;
	Oid			types[6] = {TEXTOID, INT8OID, INT8OID, INT8OID, TEXTOID, INT8ARRAYOID};
	Datum		values[6];
	char		nulls[6] = {' ', ' ', ' ', ' ', ' ', ' '};
	Datum	   *elems = palloc(sizeof(Datum) * Max(c->pos->npending, 1));

	values[0] = CStringGetTextDatum(c->cursor);
	values[1] = Int64GetDatum(c->pos->last_id);
	nulls[1] = c->pos->started ? ' ' : 'n';
	values[2] = Int64GetDatum(c->sent);
	values[3] = Int64GetDatum(c->failed);
	values[4] = c->error ? CStringGetTextDatum(c->error) : (Datum) 0;
	nulls[4] = c->error ? ' ' : 'n';
	for (int i = 0; i < c->pos->npending; i++)
		elems[i] = Int64GetDatum(c->pos->pending[i]);
	values[5] = PointerGetDatum(construct_array(elems, c->pos->npending, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	if (SPI_execute_with_args("UPDATE monk.sync_state SET last_id = $2, events_sent = events_sent + $3,"
							  " events_failed = events_failed + $4, last_run_at = now(), last_error = $5,"
							  " pending_ids = $6, updated_at = now() WHERE cursor_name = $1",
							  6, types, values, nulls, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "updating monk.sync_state failed");
}

/*
 * Save where an export's cursor stands, and count what the run sent and
 * dead-lettered.
 */
void
MonkCursorSave(const char *cursor, const MonkCursorPos *pos, int64 sent, int64 failed, const char *error)
{
	CursorArgs	c = {cursor, NULL, (MonkCursorPos *) pos, sent, failed, error};

	AsOwner(SaveCursor, &c);
}
