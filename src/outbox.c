/*
 * outbox.c
 *		Access to monk's tables: queueing events into monk.outbox.
 *
 * monk_send runs in the caller's transaction, often inside a trigger, so
 * queueing must cost little and must not depend on the caller's privileges:
 * a role with EXECUTE on monk_send may queue events but has no privilege on
 * the outbox.  The row is therefore inserted directly into the heap and its
 * indexes, as the catalogs do, without the executor or SPI.  The insert is
 * WAL-logged like any other: the outbox survives crashes and reaches
 * replicas.
 *
 * The worker reads, deletes and dead-letters events with parameterised SPI
 * statements whose plans are kept, each in a short transaction of its own:
 * nothing is held open while a request is on the network.  This file knows
 * nothing of HTTP.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/relscan.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "commands/dbcommands.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "executor/spi.h"
#include "utils/fmgrprotos.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/array.h"
#include "utils/timestamp.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "compat.h"
#include "outbox.h"
#include "settings.h"

/* The columns of monk.outbox, in order. */
enum
{
	OUTBOX_ID = 0,
	OUTBOX_KEY,
	OUTBOX_EVENT,
	OUTBOX_QUEUED_AT,
	OUTBOX_ATTEMPTS,
	OUTBOX_NEXT_ATTEMPT_AT,
	OUTBOX_LAST_STATUS,
	OUTBOX_LAST_ERROR,
	OUTBOX_NATTS
};

static const char *const outbox_columns[OUTBOX_NATTS] = {
	"id", "idempotency_key", "event", "queued_at",
	"attempts", "next_attempt_at", "last_status", "last_error"
};

/* Cached OIDs, forgotten on any invalidation of the outbox or its sequence. */
static Oid	outbox_relid = InvalidOid;
static Oid	outbox_seqid = InvalidOid;
static Oid	outbox_pkey = InvalidOid;
static bool inval_registered = false;

static void
OutboxInvalidate(Datum arg, Oid relid)
{
	if (relid == InvalidOid || relid == outbox_relid || relid == outbox_seqid ||
		relid == outbox_pkey)
	{
		outbox_relid = InvalidOid;
		outbox_seqid = InvalidOid;
		outbox_pkey = InvalidOid;
	}
}

/* Look up (once) the outbox, its sequence and its primary key. */
static void
OutboxLookup(void)
{
	Oid			nsp;

	if (OidIsValid(outbox_relid))
		return;
	if (!inval_registered)
	{
		CacheRegisterRelcacheCallback(OutboxInvalidate, (Datum) 0);
		inval_registered = true;
	}
	nsp = get_namespace_oid("monk", true);
	if (OidIsValid(nsp))
	{
		outbox_seqid = get_relname_relid("outbox_id_seq", nsp);
		outbox_pkey = get_relname_relid("outbox_pkey", nsp);
		outbox_relid = get_relname_relid("outbox", nsp);
	}
	if (!OidIsValid(outbox_relid) || !OidIsValid(outbox_seqid) || !OidIsValid(outbox_pkey))
	{
		outbox_relid = InvalidOid;
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the monk outbox does not exist in database \"%s\"",
						get_database_name(MyDatabaseId)),
				 errhint("Run CREATE EXTENSION monk in this database.")));
	}
}

/* Check that monk.outbox still has the columns this code writes. */
static void
OutboxCheckShape(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	bool		ok = desc->natts == OUTBOX_NATTS;

	for (int i = 0; ok && i < OUTBOX_NATTS; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		ok = !att->attisdropped && strcmp(NameStr(att->attname), outbox_columns[i]) == 0;
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table monk.outbox has been altered"),
				 errhint("Recreate the extension, or restore the table's columns as monk created them.")));
}

/* The id of the next event, from the outbox's sequence (read-write only). */
int64
OutboxNextId(void)
{
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot queue an event in a read-only transaction"),
				 RecoveryInProgress() ?
				 errhint("Events are queued on the primary server.") : 0));

	OutboxLookup();
	return nextval_internal(outbox_seqid, false);
}

/*
 * Insert one event into the outbox in the current transaction.  The caller
 * has validated and rendered it.
 */
void
OutboxInsert(int64 id, const char *key, const char *event, int event_len,
			 TimestampTz queued_at)
{
	Relation	rel;
	Datum		values[OUTBOX_NATTS];
	bool		nulls[OUTBOX_NATTS];
	HeapTuple	tuple;
	List	   *indexes;
	ListCell   *lc;
	TupleTableSlot *slot = NULL;

	OutboxLookup();
	rel = table_open(outbox_relid, RowExclusiveLock);
	OutboxCheckShape(rel);

	memset(nulls, false, sizeof(nulls));
	values[OUTBOX_ID] = Int64GetDatum(id);
	values[OUTBOX_KEY] = CStringGetTextDatum(key);
	values[OUTBOX_EVENT] = PointerGetDatum(cstring_to_text_with_len(event, event_len));
	values[OUTBOX_QUEUED_AT] = TimestampTzGetDatum(queued_at);
	values[OUTBOX_ATTEMPTS] = Int32GetDatum(0);
	nulls[OUTBOX_NEXT_ATTEMPT_AT] = true;
	nulls[OUTBOX_LAST_STATUS] = true;
	nulls[OUTBOX_LAST_ERROR] = true;

	tuple = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	simple_heap_insert(rel, tuple);

	/* maintain every index of the outbox (plain column indexes only) */
	indexes = RelationGetIndexList(rel);
	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), RowExclusiveLock);
		IndexInfo  *info = BuildIndexInfo(index);
		Datum		ivalues[INDEX_MAX_KEYS];
		bool		inulls[INDEX_MAX_KEYS];

		if (info->ii_Expressions != NIL || info->ii_Predicate != NIL || !info->ii_ReadyForInserts)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("index \"%s\" on monk.outbox is not supported",
							RelationGetRelationName(index)),
					 errhint("Indexes on monk.outbox must be plain column indexes; drop this one.")));
		if (slot == NULL)
		{
			slot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsHeapTuple);
			ExecStoreHeapTuple(tuple, slot, false);
		}
		FormIndexDatum(info, slot, NULL, ivalues, inulls);
		index_insert(index, ivalues, inulls, &tuple->t_self, rel,
					 index->rd_index->indisunique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
					 false, info);
		index_close(index, NoLock);
	}
	if (slot)
		ExecDropSingleTupleTableSlot(slot);
	list_free(indexes);
	heap_freetuple(tuple);
	table_close(rel, NoLock);
}

/*
 * With monk.max_outbox_events set, refuse a new event when the outbox holds
 * that many.  The depth is the outbox's live row count from the cumulative
 * statistics (committed inserts less deletes, a second or so behind): a
 * shared-memory lookup, so that the check stays cheap whatever the backlog.
 */
void
OutboxCheckCapacity(void)
{
	PgStat_StatTabEntry *stats;
	int64		depth;

	if (monk_max_outbox_events <= 0)
		return;

	OutboxLookup();
	stats = pgstat_fetch_stat_tabentry(outbox_relid);
	depth = stats ? MonkStatLiveTuples(stats) : 0;
	if (depth >= monk_max_outbox_events)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("the monk outbox is full"),
				 errdetail("The outbox holds about " INT64_FORMAT " events; monk.max_outbox_events is %d.",
						   depth, monk_max_outbox_events),
				 errhint("Check monk.status: the worker may be unable to reach the Events API. Raise monk.max_outbox_events to queue more.")));
}

/* Saved plans of the worker's statements. */
static SPIPlanPtr plan_read = NULL;
static SPIPlanPtr plan_delete = NULL;
static SPIPlanPtr plan_delete_tid = NULL;
static SPIPlanPtr plan_dead_letter = NULL;
static SPIPlanPtr plan_park = NULL;
static SPIPlanPtr plan_notify = NULL;

/* Prepare a statement once and keep its plan. */
static SPIPlanPtr
Prepare(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, types);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(p) != 0)
			elog(ERROR, "SPI_keepplan failed");
		*plan = p;
	}
	return *plan;
}

/* The caller's memory context, restored when the transaction ends. */
static MemoryContext outbox_caller_cxt = NULL;

/* Open a short transaction with a snapshot and SPI. */
void
OutboxBegin(const char *activity)
{
	outbox_caller_cxt = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

/* Commit the transaction opened by OutboxBegin. */
void
OutboxCommit(void)
{
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(outbox_caller_cxt);
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* Does this database have monk's outbox (CREATE EXTENSION monk)? */
bool
OutboxExists(void)
{
	Oid			nsp = get_namespace_oid("monk", true);

	return OidIsValid(nsp) && OidIsValid(get_relname_relid("outbox", nsp));
}

/*
 * Read up to "limit" queued events with after < id < before, in id order,
 * handing each to cb.  Returns how many were read.
 */
int
OutboxRead(int64 after, int64 before, int limit, OutboxRowCallback cb, void *arg)
{
	Oid			types[3] = {INT8OID, INT8OID, INT8OID};
	Datum		values[3];
	int			ret;
	uint64		n;

	Prepare(&plan_read,
			"SELECT id, event, queued_at, ctid FROM monk.outbox"
			" WHERE id > $1 AND id < $2 ORDER BY id LIMIT $3",
			3, types);
	values[0] = Int64GetDatum(after);
	values[1] = Int64GetDatum(before);
	values[2] = Int64GetDatum(limit);
	ret = SPI_execute_plan(plan_read, values, NULL, true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "reading monk.outbox failed: %s", SPI_result_code_string(ret));

	n = SPI_processed;
	for (uint64 i = 0; i < n; i++)
	{
		HeapTuple	tuple = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
		text	   *event = DatumGetTextPP(SPI_getbinval(tuple, desc, 2, &isnull));
		TimestampTz queued_at = DatumGetTimestampTz(SPI_getbinval(tuple, desc, 3, &isnull));
		ItemPointer tid = (ItemPointer) DatumGetPointer(SPI_getbinval(tuple, desc, 4, &isnull));

		cb(arg, id, tid, VARDATA_ANY(event), VARSIZE_ANY_EXHDR(event), queued_at);
	}
	SPI_freetuptable(SPI_tuptable);
	return (int) n;
}

/* An int8[] of the given ids. */
static Datum
IdArray(const int64 *ids, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * n);
	ArrayType  *arr;

	for (int i = 0; i < n; i++)
		elems[i] = Int64GetDatum(ids[i]);
	arr = construct_array(elems, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
	pfree(elems);
	return PointerGetDatum(arr);
}

/* Delete the events the API accepted. */
void
OutboxDelete(const int64 *ids, int n)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum		values[1];
	int			ret;

	Prepare(&plan_delete, "DELETE FROM monk.outbox WHERE id = ANY ($1)", 1, types);
	values[0] = IdArray(ids, n);
	ret = SPI_execute_plan(plan_delete, values, NULL, false, 0);
	if (ret != SPI_OK_DELETE)
		elog(ERROR, "deleting from monk.outbox failed: %s", SPI_result_code_string(ret));
}

/*
 * Delete accepted events by where their rows are (a TID scan per row, no
 * index descent), each checked by its id: a row that moved since it was read
 * is simply not found (and sent again later, with its key).
 */
void
OutboxDeleteByTid(const ItemPointerData *tids, const int64 *ids, int n)
{
	Oid			types[2] = {TIDARRAYOID, INT8ARRAYOID};
	Datum		values[2];
	Datum	   *elems = palloc(sizeof(Datum) * n);
	int			ret;

	Prepare(&plan_delete_tid,
			"DELETE FROM monk.outbox o USING unnest($1::pg_catalog.tid[], $2::pg_catalog.int8[]) AS d(t, i)"
			" WHERE o.ctid = d.t AND o.id = d.i",
			2, types);
	for (int i = 0; i < n; i++)
		elems[i] = PointerGetDatum(&tids[i]);
	values[0] = PointerGetDatum(construct_array(elems, n, TIDOID, sizeof(ItemPointerData), false,
												TYPALIGN_SHORT));
	values[1] = IdArray(ids, n);
	ret = SPI_execute_plan(plan_delete_tid, values, NULL, false, 0);
	if (ret != SPI_OK_DELETE)
		elog(ERROR, "deleting from monk.outbox failed: %s", SPI_result_code_string(ret));
}

/* Move an event the API refused to monk.dead_letter, with the API's answer. */
void
OutboxDeadLetter(int64 id, long status, const char *error, const char *response, int attempts)
{
	Oid			types[5] = {INT8OID, INT4OID, TEXTOID, TEXTOID, INT4OID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	int			ret;

	Prepare(&plan_dead_letter,
			"WITH moved AS (DELETE FROM monk.outbox WHERE id = $1"
			"               RETURNING id, idempotency_key, event, queued_at, attempts)"
			" INSERT INTO monk.dead_letter (source, source_id, idempotency_key, event,"
			"        http_status, error, response_body, attempts, queued_at)"
			" SELECT 'outbox', id, idempotency_key, event, $2, $3, $4, attempts + $5, queued_at"
			"   FROM moved",
			5, types);
	values[0] = Int64GetDatum(id);
	values[1] = Int32GetDatum((int32) status);
	values[2] = CStringGetTextDatum(error);
	if (response && response[0])
		values[3] = CStringGetTextDatum(response);
	else
		nulls[3] = 'n';
	values[4] = Int32GetDatum(attempts + 1);
	ret = SPI_execute_plan(plan_dead_letter, values, nulls, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "dead-lettering an event failed: %s", SPI_result_code_string(ret));
}

/* Record on the events of a parked batch why it waits, and until when. */
void
OutboxPark(const int64 *ids, int n, int attempts, long status, const char *error,
		   TimestampTz next_attempt_at)
{
	Oid			types[5] = {INT8ARRAYOID, INT4OID, INT4OID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};
	int			ret;

	Prepare(&plan_park,
			"UPDATE monk.outbox SET attempts = attempts + $2, last_status = $3,"
			"       last_error = $4, next_attempt_at = $5 WHERE id = ANY ($1)",
			5, types);
	values[0] = IdArray(ids, n);
	values[1] = Int32GetDatum(attempts);
	values[2] = Int32GetDatum((int32) status);
	if (status == 0)
		nulls[2] = 'n';
	values[3] = CStringGetTextDatum(error);
	values[4] = TimestampTzGetDatum(next_attempt_at);
	ret = SPI_execute_plan(plan_park, values, nulls, false, 0);
	if (ret != SPI_OK_UPDATE)
		elog(ERROR, "updating monk.outbox failed: %s", SPI_result_code_string(ret));
}

/* NOTIFY monk_alert, delivered when the current transaction commits. */
void
OutboxNotify(const char *payload)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];
	int			ret;

	Prepare(&plan_notify, "SELECT pg_catalog.pg_notify('monk_alert', $1)", 1, types);
	values[0] = CStringGetTextDatum(payload);
	ret = SPI_execute_plan(plan_notify, values, NULL, false, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "pg_notify failed: %s", SPI_result_code_string(ret));
}
