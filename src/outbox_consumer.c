/*
 * outbox_consumer.c
 *		The worker's side of the outbox: reading the log in windows between
 *		snapshots, recording what settled and the frontier, rotating and
 *		truncating segments.
 *
 * The worker reads the events that became visible between two snapshots of
 * its own (a window): the transactions in progress at the earlier snapshot
 * that have committed since ("late" ones, each an index lookup), then the
 * transaction ids from the earlier snapshot's xmax to the later one's, in
 * (txid, id) order through the index on those columns.  So a read never
 * revisits a settled event, whatever vacuum can or cannot remove, and its
 * cost does not depend on how old the oldest open transaction is.
 *
 * The snapshot up to which every event is settled (accepted or dead-
 * lettered), the frontier, is kept in monk.queue_state.  A segment that is
 * not the current one and holds no unsettled event is truncated -- after
 * monk.retention -- under a lock taken only if nobody holds any, so that a
 * truncation never waits behind a reader such as pg_dump and never blocks
 * monk_send (outbox.c).
 *
 * The statements are parameterised SPI with kept plans, each in a short
 * transaction of its own (xact.c).  This file knows nothing of HTTP.
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "outbox.h"
#include "settings.h"
#include "standby.h"
#include "xact.h"

/*
 * "Not settled", the one place C writes it: the event's transaction is not
 * visible in the frontier, given as $1 (its xmax) and $2 (its transactions
 * in progress).  SQL writes it once too, in the view monk.outbox.
 */
#define UNSETTLED "(txid >= $1 OR txid = ANY ($2))"

/* Saved plans of the worker's statements. */
static SPIPlanPtr plan_read_txid = NULL;
static SPIPlanPtr plan_read_range = NULL;
static SPIPlanPtr plan_read_txid_keys = NULL;
static SPIPlanPtr plan_read_range_keys = NULL;
static SPIPlanPtr plan_state = NULL;
static SPIPlanPtr plan_save = NULL;
static SPIPlanPtr plan_park = NULL;
static SPIPlanPtr plan_unpark = NULL;
static SPIPlanPtr plan_sent = NULL;
static SPIPlanPtr plan_notify = NULL;
static SPIPlanPtr plan_unsettled = NULL;
static SPIPlanPtr plan_count = NULL;
static SPIPlanPtr plan_repeated = NULL;

/*
 * Which outbox this database has: none (no CREATE EXTENSION monk), 0.1's
 * table (waiting for ALTER EXTENSION monk UPDATE), or the log.
 */
MonkOutboxSchema
MonkOutboxFindSchema(void)
{
	Oid			nsp = get_namespace_oid("monk", true);

	if (!OidIsValid(nsp))
		return MONK_OUTBOX_NONE;
	if (OidIsValid(get_relname_relid("queue_state", nsp)))
		return MONK_OUTBOX_LOG;
	if (OidIsValid(get_relname_relid("outbox", nsp)))
		return MONK_OUTBOX_LEGACY;
	return MONK_OUTBOX_NONE;
}

/* An int8[] of the given values. */
static Datum
Int8Array(const int64 *values, int n)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(n, 1));
	ArrayType  *arr;

	for (int i = 0; i < n; i++)
		elems[i] = Int64GetDatum(values[i]);
	arr = construct_array(elems, n, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE);
	pfree(elems);
	return PointerGetDatum(arr);
}

/* The elements of an int8[] as a palloc'd array; *n gets their count. */
static uint64 *
Int8ArrayValues(Datum d, int *n)
{
	ArrayType  *arr = DatumGetArrayTypeP(d);
	Datum	   *elems;
	bool	   *nulls;
	uint64	   *out;

	deconstruct_array(arr, INT8OID, sizeof(int64), FLOAT8PASSBYVAL, TYPALIGN_DOUBLE,
					  &elems, &nulls, n);
	out = palloc(sizeof(uint64) * Max(*n, 1));
	for (int i = 0; i < *n; i++)
		out[i] = (uint64) DatumGetInt64(elems[i]);
	return out;
}

static int
CompareU64(const void *a, const void *b)
{
	uint64		x = *(const uint64 *) a;
	uint64		y = *(const uint64 *) b;

	return (x > y) - (x < y);
}

/*
 * The full id of a transaction id of a current snapshot: it is at most one
 * epoch behind the next transaction id (as pg_current_snapshot() does).
 */
static uint64
WidenXid(FullTransactionId next, TransactionId xid)
{
	uint64		epoch = EpochFromFullTransactionId(next);

	if (!TransactionIdIsNormal(xid))
		return (uint64) xid;
	if (xid > XidFromFullTransactionId(next))
		epoch--;
	return (epoch << 32) | xid;
}

/*
 * The current transaction's snapshot, with full transaction ids.  Returns
 * the end of the WAL inserted, read after it: every commit it sees is
 * before there (and flushed; InvalidXLogRecPtr during recovery).
 */
XLogRecPtr
MonkOutboxTakeSnapshot(MonkOutboxSnapshot *snap, MemoryContext cxt)
{
	Snapshot	s = GetActiveSnapshot();
	FullTransactionId next = ReadNextFullTransactionId();
	MemoryContext old = MemoryContextSwitchTo(cxt);

	snap->xmin = WidenXid(next, s->xmin);
	snap->xmax = WidenXid(next, s->xmax);
	snap->nxip = s->xcnt;
	snap->xip = palloc(sizeof(uint64) * Max(s->xcnt, 1));
	for (uint32 i = 0; i < s->xcnt; i++)
		snap->xip[i] = WidenXid(next, s->xip[i]);
	qsort(snap->xip, snap->nxip, sizeof(uint64), CompareU64);
	MemoryContextSwitchTo(old);
	return MonkFlushSeenCommits();
}

/* Is the transaction txid visible (finished) in snap? */
bool
MonkOutboxSnapshotSees(const MonkOutboxSnapshot *snap, uint64 txid)
{
	if (txid < snap->xmin)
		return true;
	if (txid >= snap->xmax)
		return false;
	return bsearch(&txid, snap->xip, snap->nxip, sizeof(uint64), CompareU64) == NULL;
}

/* Rows fetched at a time: what a read holds besides the events it keeps. */
#define READ_FETCH 500

/*
 * Run a read of the log (a kept plan) through a cursor and hand each row to
 * cb, in order, while the events' bytes stay within *budget (the first row
 * always goes) and cb takes them; *budget is what is left.  Returns how many
 * rows went, and in *cut whether the budget or cb stopped it.  Rows are
 * fetched READ_FETCH at a time, so that a read of many long rows never holds
 * them all at once; an event's size is read from its header: one that is not
 * handed over is never decompressed or fetched from TOAST.
 */
static int
ForEachRow(SPIPlanPtr plan, Datum *values, MonkOutboxRowCallback cb, void *arg, int64 *budget, bool *cut)
{
	Portal		portal = SPI_cursor_open(NULL, plan, values, NULL, true);
	int			went = 0;
	bool		more = true;

	*cut = false;
	while (more && !*cut)
	{
		uint64		n;
		uint64		i;

		SPI_cursor_fetch(portal, true, READ_FETCH);
		n = SPI_processed;
		more = n == READ_FETCH;
		for (i = 0; i < n; i++)
		{
			HeapTuple	tuple = SPI_tuptable->vals[i];
			TupleDesc	desc = SPI_tuptable->tupdesc;
			bool		isnull;
			MonkOutboxRow row;
			text	   *key;
			text	   *event;
			Datum		event_datum = SPI_getbinval(tuple, desc, 5, &isnull);
			int64		size = (int64) toast_raw_datum_size(event_datum) - VARHDRSZ;

			if (went > 0 && size > *budget)
			{
				*cut = true;
				break;
			}
			*budget -= size;
			row.segment = DatumGetInt16(SPI_getbinval(tuple, desc, 1, &isnull));
			row.txid = (uint64) DatumGetInt64(SPI_getbinval(tuple, desc, 2, &isnull));
			row.id = DatumGetInt64(SPI_getbinval(tuple, desc, 3, &isnull));
			key = DatumGetTextPP(SPI_getbinval(tuple, desc, 4, &isnull));
			event = DatumGetTextPP(event_datum);
			row.queued_at = DatumGetTimestampTz(SPI_getbinval(tuple, desc, 6, &isnull));
			{
				Datum		newest = SPI_getbinval(tuple, desc, 7, &isnull);

				row.newest_id = isnull ? -1 : DatumGetInt64(newest);
			}
			row.key = VARDATA_ANY(key);
			row.key_len = VARSIZE_ANY_EXHDR(key);
			row.event = VARDATA_ANY(event);
			row.event_len = VARSIZE_ANY_EXHDR(event);
			if (!cb(arg, &row))
			{
				*budget += size;
				*cut = true;
				break;
			}
			if ((Pointer) event != DatumGetPointer(event_datum))
				pfree(event);
			went++;
		}
		SPI_freetuptable(SPI_tuptable);
	}
	SPI_cursor_close(portal);
	return went;
}

/*
 * Read up to "limit" events of transaction txid with id > after_id, in id
 * order (the events of a transaction that committed late), within *budget
 * bytes (ForEachRow).
 */
int
MonkOutboxReadTxid(uint64 txid, int64 after_id, int limit, bool with_keys, int64 *budget,
				   bool *cut, MonkOutboxRowCallback cb, void *arg)
{
	Oid			types[3] = {INT8OID, INT8OID, INT8OID};
	Datum		values[3];
	SPIPlanPtr *plan = with_keys ? &plan_read_txid_keys : &plan_read_txid;

	MonkPlanKeep(plan, with_keys ?
				 "SELECT l.segment, l.txid, l.id, l.idempotency_key, l.event, l.queued_at,"
				 "  (SELECT k.max_id FROM pg_temp.monk_window_keys k WHERE k.key = l.idempotency_key)"
				 " FROM monk.log l WHERE txid = $1 AND id > $2 ORDER BY txid, id LIMIT $3" :
				 "SELECT segment, txid, id, idempotency_key, event, queued_at, NULL::pg_catalog.int8 FROM monk.log"
				 " WHERE txid = $1 AND id > $2 ORDER BY txid, id LIMIT $3",
				 3, types);
	values[0] = Int64GetDatum((int64) txid);
	values[1] = Int64GetDatum(after_id);
	values[2] = Int64GetDatum(limit);
	return ForEachRow(*plan, values, cb, arg, budget, cut);
}

/*
 * Read up to "limit" events with from <= txid < to, past (after_txid,
 * after_id), in (txid, id) order, leaving out the given transactions (those
 * in progress at the window's end), within *budget bytes (ForEachRow).
 */
int
MonkOutboxReadRange(uint64 from, uint64 to, uint64 after_txid, int64 after_id,
					const uint64 *exclude, int nexclude, int limit, bool with_keys,
					int64 *budget, bool *cut, MonkOutboxRowCallback cb, void *arg)
{
	Oid			types[6] = {INT8OID, INT8OID, INT8OID, INT8OID, INT8ARRAYOID, INT8OID};
	Datum		values[6];
	SPIPlanPtr *plan = with_keys ? &plan_read_range_keys : &plan_read_range;

	MonkPlanKeep(plan, with_keys ?
				 "SELECT l.segment, l.txid, l.id, l.idempotency_key, l.event, l.queued_at,"
				 "  (SELECT k.max_id FROM pg_temp.monk_window_keys k WHERE k.key = l.idempotency_key)"
				 " FROM monk.log l"
				 " WHERE txid >= $1 AND txid < $2 AND (txid, id) > ($3, $4) AND txid <> ALL ($5)"
				 " ORDER BY txid, id LIMIT $6" :
				 "SELECT segment, txid, id, idempotency_key, event, queued_at, NULL::pg_catalog.int8 FROM monk.log"
				 " WHERE txid >= $1 AND txid < $2 AND (txid, id) > ($3, $4) AND txid <> ALL ($5)"
				 " ORDER BY txid, id LIMIT $6",
				 6, types);
	values[0] = Int64GetDatum((int64) from);
	values[1] = Int64GetDatum((int64) to);
	values[2] = Int64GetDatum((int64) after_txid);
	values[3] = Int64GetDatum(after_id);
	values[4] = Int8Array((const int64 *) exclude, nexclude);
	values[5] = Int64GetDatum(limit);
	return ForEachRow(*plan, values, cb, arg, budget, cut);
}

/*
 * Load the frontier, the current segment and the segments' history from
 * monk.queue_state and monk.segment.
 */
void
MonkOutboxLoadState(MonkOutboxState *state, MemoryContext cxt)
{
	bool		isnull;
	MemoryContext old;

	MonkPlanKeep(&plan_state,
				 "SELECT q.frontier_xmin, q.frontier_xmax, q.frontier_xip, q.cur_segment, q.ctid,"
				 "       s.segment, s.rotated_at, s.settled_at, s.truncated_at,"
				 "       q.window_xmax, q.window_xip, q.window_txid, q.window_id"
				 "  FROM monk.queue_state q CROSS JOIN monk.segment s ORDER BY s.segment",
				 0, NULL);
	MonkPlanRun(plan_state, NULL, NULL, true, SPI_OK_SELECT, "reading monk.queue_state");
	if (SPI_processed != MONK_SEGMENTS)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("monk.queue_state or monk.segment has been altered"),
				 errhint("Recreate the extension.")));
	old = MemoryContextSwitchTo(cxt);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	t = SPI_tuptable->vals[i];
		TupleDesc	d = SPI_tuptable->tupdesc;
		MonkOutboxSegment *seg = &state->segments[i];
		Datum		v;

		if (i == 0)
		{
			state->frontier.xmin = (uint64) DatumGetInt64(SPI_getbinval(t, d, 1, &isnull));
			state->frontier.xmax = (uint64) DatumGetInt64(SPI_getbinval(t, d, 2, &isnull));
			state->frontier.xip = Int8ArrayValues(SPI_getbinval(t, d, 3, &isnull), &state->frontier.nxip);
			qsort(state->frontier.xip, state->frontier.nxip, sizeof(uint64), CompareU64);
			state->cur_segment = DatumGetInt16(SPI_getbinval(t, d, 4, &isnull));
			ItemPointerCopy((ItemPointer) DatumGetPointer(SPI_getbinval(t, d, 5, &isnull)), &state->ctid);
			v = SPI_getbinval(t, d, 10, &isnull);
			state->in_window = !isnull;
			state->window.xip = NULL;
			if (state->in_window)
			{
				state->window.xmax = (uint64) DatumGetInt64(v);
				state->window.xip = Int8ArrayValues(SPI_getbinval(t, d, 11, &isnull), &state->window.nxip);
				qsort(state->window.xip, state->window.nxip, sizeof(uint64), CompareU64);
				state->window.xmin = state->window.nxip > 0 ? state->window.xip[0] : state->window.xmax;
				state->pos_txid = (uint64) DatumGetInt64(SPI_getbinval(t, d, 12, &isnull));
				state->pos_id = DatumGetInt64(SPI_getbinval(t, d, 13, &isnull));
			}
		}
		v = SPI_getbinval(t, d, 7, &isnull);
		seg->rotated_at = isnull ? 0 : DatumGetTimestampTz(v);
		v = SPI_getbinval(t, d, 8, &isnull);
		seg->settled_at = isnull ? 0 : DatumGetTimestampTz(v);
		v = SPI_getbinval(t, d, 9, &isnull);
		seg->truncated_at = isnull ? 0 : DatumGetTimestampTz(v);
	}
	MemoryContextSwitchTo(old);
	SPI_freetuptable(SPI_tuptable);
	if (state->cur_segment < 0 || state->cur_segment >= MONK_SEGMENTS)
		state->cur_segment = 0;
}

/*
 * Record the frontier and the current segment.  The row is updated where it
 * was last seen (a TID scan: its dead versions, which a held snapshot keeps,
 * are never walked), and found again by a scan only when it moved.
 */
void
MonkOutboxSaveState(MonkOutboxState *state)
{
	Oid			types[9] = {
		TIDOID, INT8OID, INT8OID, INT8ARRAYOID, INT2OID,
		INT8OID, INT8ARRAYOID, INT8OID, INT8OID
	};
	Datum		values[9];
	char		nulls[9] = {' ', ' ', ' ', ' ', ' ', ' ', ' ', ' ', ' '};
	bool		isnull;

	MonkPlanKeep(&plan_save,
				 "UPDATE monk.queue_state SET frontier_xmin = $2, frontier_xmax = $3, frontier_xip = $4,"
				 "       cur_segment = $5, window_xmax = $6, window_xip = $7, window_txid = $8, window_id = $9,"
				 "       updated_at = pg_catalog.now()"
				 " WHERE ctid = $1 RETURNING ctid",
				 9, types);
	values[0] = PointerGetDatum(&state->ctid);
	values[1] = Int64GetDatum((int64) state->frontier.xmin);
	values[2] = Int64GetDatum((int64) state->frontier.xmax);
	values[3] = Int8Array((const int64 *) state->frontier.xip, state->frontier.nxip);
	values[4] = Int16GetDatum((int16) state->cur_segment);
	if (state->in_window)
	{
		values[5] = Int64GetDatum((int64) state->window.xmax);
		values[6] = Int8Array((const int64 *) state->window.xip, state->window.nxip);
		values[7] = Int64GetDatum((int64) state->pos_txid);
		values[8] = Int64GetDatum(state->pos_id);
	}
	else
		nulls[5] = nulls[6] = nulls[7] = nulls[8] = 'n';
	MonkPlanRun(plan_save, values, nulls, false, SPI_OK_UPDATE_RETURNING, "updating monk.queue_state");
	if (SPI_processed != 1)
	{
		/* the row moved (it was updated by hand): find it once */
		int			ret = SPI_execute("SELECT ctid FROM monk.queue_state LIMIT 1", false, 1);

		if (ret != SPI_OK_SELECT || SPI_processed != 1)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("monk.queue_state has no row"),
					 errhint("Recreate the extension.")));
		ItemPointerCopy((ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[0],
																	SPI_tuptable->tupdesc, 1, &isnull)),
						&state->ctid);
		SPI_freetuptable(SPI_tuptable);
		values[0] = PointerGetDatum(&state->ctid);
		MonkPlanRun(plan_save, values, nulls, false, SPI_OK_UPDATE_RETURNING, "updating monk.queue_state");
	}
	ItemPointerCopy((ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[0],
																SPI_tuptable->tupdesc, 1, &isnull)),
					&state->ctid);
	SPI_freetuptable(SPI_tuptable);
}

/* How many events are not settled (at the worker's start). */
int64
MonkOutboxCountUnsettled(const MonkOutboxSnapshot *frontier)
{
	Oid			types[2] = {INT8OID, INT8ARRAYOID};
	Datum		values[2];
	bool		isnull;
	int64		n;

	MonkPlanKeep(&plan_count,
				 "SELECT pg_catalog.count(*) FROM monk.log WHERE " UNSETTLED,
				 2, types);
	values[0] = Int64GetDatum((int64) frontier->xmax);
	values[1] = Int8Array((const int64 *) frontier->xip, frontier->nxip);
	MonkPlanRun(plan_count, values, NULL, true, SPI_OK_SELECT, "counting queued events");
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_freetuptable(SPI_tuptable);
	return n;
}

/* Make "segment" the one new events go to. */
void
MonkOutboxRotate(MonkOutboxState *state, int segment)
{
	char		sql[128];

	state->cur_segment = segment;
	MonkOutboxSaveState(state);
	snprintf(sql, sizeof(sql),
			 "UPDATE monk.segment SET rotated_at = pg_catalog.now() WHERE segment = %d", segment);
	if (SPI_execute(sql, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "updating monk.segment failed");
	state->segments[segment].rotated_at = GetCurrentTimestamp();
}

/*
 * Truncate a segment that is not the current one if every event in it is
 * settled and has been for retention_s seconds (monk.retention).  The lock is taken only if nobody
 * holds any (an insert in progress, pg_dump, a reader): otherwise nothing
 * happens and the caller tries again later.  Returns true if truncated.
 */
bool
MonkOutboxTryTruncate(MonkOutboxState *state, int segment, int retention_s)
{
	Oid			types[2] = {INT8OID, INT8ARRAYOID};
	Datum		values[2];
	MonkOutboxSegment *seg = &state->segments[segment];
	TimestampTz now = GetCurrentTimestamp();
	char		sql[256];
	bool		unsettled;

	Assert(segment != state->cur_segment);
	MonkWaitPoint("truncate");
	if (!ConditionalLockRelationOid(MonkOutboxSegmentOid(segment), AccessExclusiveLock))
		return false;

	/*
	 * Under the lock nothing can be added, and every transaction that added
	 * to the segment has ended: is everything in it settled?  Asked with a
	 * snapshot taken now (not read-only: SPI takes a new one), which sees
	 * each of those transactions that committed -- the transaction's first
	 * snapshot, taken before the lock, may not.
	 */
	snprintf(sql, sizeof(sql),
			 "SELECT 1 WHERE EXISTS (SELECT FROM monk.log_%d WHERE " UNSETTLED ")",
			 segment);
	plan_unsettled = NULL;
	MonkPlanKeep(&plan_unsettled, sql, 2, types);
	values[0] = Int64GetDatum((int64) state->frontier.xmax);
	values[1] = Int8Array((const int64 *) state->frontier.xip, state->frontier.nxip);
	MonkPlanRun(plan_unsettled, values, NULL, false, SPI_OK_SELECT, "checking a segment");
	unsettled = SPI_processed > 0;
	SPI_freetuptable(SPI_tuptable);
	SPI_freeplan(plan_unsettled);
	plan_unsettled = NULL;
	if (unsettled)
		return false;

	if (seg->settled_at == 0)
	{
		seg->settled_at = now;
		snprintf(sql, sizeof(sql),
				 "UPDATE monk.segment SET settled_at = pg_catalog.now() WHERE segment = %d", segment);
		if (SPI_execute(sql, false, 0) != SPI_OK_UPDATE)
			elog(ERROR, "updating monk.segment failed");
	}
	if (retention_s > 0 && now - seg->settled_at < (TimestampTz) retention_s * USECS_PER_SEC)
		return false;

	snprintf(sql, sizeof(sql), "TRUNCATE monk.log_%d", segment);
	if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "truncating monk.log_%d failed", segment);
	snprintf(sql, sizeof(sql),
			 "UPDATE monk.segment SET truncated_at = pg_catalog.now(), settled_at = NULL WHERE segment = %d;"
			 "DELETE FROM monk.sent_batch WHERE segment = %d",
			 segment, segment);
	if (SPI_execute(sql, false, 0) != SPI_OK_DELETE)
		elog(ERROR, "updating monk.segment failed");
	seg->truncated_at = now;
	seg->settled_at = 0;
	return true;
}

/* Record on the events of a parked batch why they wait, and until when. */
void
MonkOutboxPark(const int64 *ids, int n, int attempts, long status, const char *error,
			   TimestampTz next_attempt_at)
{
	Oid			types[5] = {INT8ARRAYOID, INT4OID, INT4OID, TEXTOID, TIMESTAMPTZOID};
	Datum		values[5];
	char		nulls[5] = {' ', ' ', ' ', ' ', ' '};

	MonkPlanKeep(&plan_park,
				 "INSERT INTO monk.outbox_attempts AS a (id, attempts, last_status, last_error, next_attempt_at)"
				 " SELECT i, $2, $3, $4, $5 FROM pg_catalog.unnest($1::pg_catalog.int8[]) AS i"
				 " ON CONFLICT (id) DO UPDATE SET attempts = a.attempts + excluded.attempts,"
				 "    last_status = excluded.last_status, last_error = excluded.last_error,"
				 "    next_attempt_at = excluded.next_attempt_at",
				 5, types);
	values[0] = Int8Array(ids, n);
	values[1] = Int32GetDatum(attempts);
	values[2] = Int32GetDatum((int32) status);
	if (status == 0)
		nulls[2] = 'n';
	values[3] = CStringGetTextDatum(error);
	values[4] = TimestampTzGetDatum(next_attempt_at);
	MonkPlanRun(plan_park, values, nulls, false, SPI_OK_INSERT, "recording a parked batch");
}

/* Forget the retry state of events that were parked once and are settled. */
void
MonkOutboxUnpark(const int64 *ids, int n)
{
	Oid			types[1] = {INT8ARRAYOID};
	Datum		values[1];

	MonkPlanKeep(&plan_unpark, "DELETE FROM monk.outbox_attempts WHERE id = ANY ($1)", 1, types);
	values[0] = Int8Array(ids, n);
	MonkPlanRun(plan_unpark, values, NULL, false, SPI_OK_DELETE, "updating monk.outbox_attempts");
}

/*
 * Keep what an accepted batch was (one row per batch and segment): for
 * monk.sent, and so that its events, settled though the frontier may not
 * have passed them yet, are neither listed as queued nor sent again.
 */
void
MonkOutboxRecordSent(int segment, const uint64 *txids, const int64 *ids, int n, long status,
					 int attempts)
{
	Oid			types[6] = {INT2OID, INT8OID, INT8ARRAYOID, INT8ARRAYOID, INT4OID, INT4OID};
	Datum		values[6];
	uint64		max_txid = 0;

	MonkPlanKeep(&plan_sent,
				 "INSERT INTO monk.sent_batch (segment, max_txid, txids, ids, http_status, attempts)"
				 " VALUES ($1, $2, $3, $4, $5, $6)",
				 6, types);
	for (int i = 0; i < n; i++)
		max_txid = Max(max_txid, txids[i]);
	values[0] = Int16GetDatum((int16) segment);
	values[1] = Int64GetDatum((int64) max_txid);
	values[2] = Int8Array((const int64 *) txids, n);
	values[3] = Int8Array(ids, n);
	values[4] = Int32GetDatum((int32) status);
	values[5] = Int32GetDatum(attempts);
	MonkPlanRun(plan_sent, values, NULL, false, SPI_OK_INSERT, "recording a sent batch");
}

/*
 * Fill the temporary table pg_temp.monk_window_keys (made at the first call,
 * for the worker's session) with each key that has several versions in a
 * window -- the transactions from "from" to "to" but those of "exclude", and
 * the "late" ones -- and the id of its newest version.  The reads "with
 * keys" join it, so that the worker's memory does not grow with them.
 */
void
MonkOutboxLoadRepeatedKeys(uint64 from, uint64 to, const uint64 *exclude, int nexclude,
						   const uint64 *late, int nlate)
{
	static bool created = false;
	Oid			types[4] = {INT8OID, INT8OID, INT8ARRAYOID, INT8ARRAYOID};
	Datum		values[4];

	if (!created)
	{
		/*
		 * a hash index: a key may be longer than a btree entry can be (2,704
		 * bytes), and is only looked up by equality
		 */
		if (SPI_execute("CREATE TEMP TABLE IF NOT EXISTS monk_window_keys"
						" (key pg_catalog.text NOT NULL, max_id pg_catalog.int8 NOT NULL)",
						false, 0) != SPI_OK_UTILITY ||
			SPI_execute("CREATE INDEX IF NOT EXISTS monk_window_keys_key ON pg_temp.monk_window_keys USING hash (key)",
						false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "creating pg_temp.monk_window_keys failed");
		created = true;
	}
	if (SPI_execute("TRUNCATE pg_temp.monk_window_keys", false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "truncating pg_temp.monk_window_keys failed");
	MonkPlanKeep(&plan_repeated,
				 "INSERT INTO pg_temp.monk_window_keys"
				 " SELECT idempotency_key, pg_catalog.max(id) FROM ("
				 "  SELECT idempotency_key, id FROM monk.log WHERE txid >= $1 AND txid < $2 AND txid <> ALL ($3)"
				 "  UNION ALL"
				 "  SELECT idempotency_key, id FROM monk.log WHERE txid = ANY ($4)) w"
				 " GROUP BY idempotency_key HAVING pg_catalog.count(*) > 1",
				 4, types);
	values[0] = Int64GetDatum((int64) from);
	values[1] = Int64GetDatum((int64) to);
	values[2] = Int8Array((const int64 *) exclude, nexclude);
	values[3] = Int8Array((const int64 *) late, nlate);
	MonkPlanRun(plan_repeated, values, NULL, false, SPI_OK_INSERT, "reading the window's repeated keys");
	/* the reads of this transaction, under its first snapshot, see the rows */
	CommandCounterIncrement();
	UpdateActiveSnapshotCommandId();
}

/* NOTIFY monk_alert, delivered when the current transaction commits. */
void
MonkOutboxNotify(const char *payload)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	MonkPlanKeep(&plan_notify, "SELECT pg_catalog.pg_notify('monk_alert', $1)", 1, types);
	values[0] = CStringGetTextDatum(payload);
	MonkPlanRun(plan_notify, values, NULL, false, SPI_OK_SELECT, "pg_notify");
}
