/*
 * outbox.c
 *		The outbox, a log of segments, and its producers: monk_send and
 *		monk_capture append events to it in the caller's transaction.
 *
 * The outbox is stored as an ordered log.  Each event is appended to the
 * current segment (a partition of monk.log) with the full id of the
 * transaction that wrote it; no event is ever updated or deleted one by one.
 * The worker consumes the log (outbox_consumer.c).
 *
 * Queueing runs in the caller's transaction, often inside a trigger, so it
 * must cost little and must not depend on the caller's privileges: the row
 * is inserted directly into the heap and index of the segment, as the
 * catalogs do, without the executor or SPI, and WAL-logged like any other.
 * The insert holds its segment's lock until it commits: the consumer
 * truncates a segment only under a lock that nobody else holds, and finds
 * a late insert into a truncated segment by its transaction id.
 *
 * A database still on the 0.1 schema (the library was updated, ALTER
 * EXTENSION monk UPDATE not yet run) keeps queueing into 0.1's monk.outbox
 * table; its worker waits for the update.
 *
 * This file, outbox_consumer.c and store.c are the only ones that write
 * monk's tables.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/transam.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "commands/dbcommands.h"
#include "commands/sequence.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "compat.h"
#include "outbox.h"
#include "settings.h"
#include "shmem.h"

/* The columns of a segment (monk.log_N), in order. */
enum
{
	LOG_SEGMENT = 0,
	LOG_TXID,
	LOG_ID,
	LOG_KEY,
	LOG_EVENT,
	LOG_QUEUED_AT,
	LOG_NATTS
};

static const char *const log_columns[LOG_NATTS] = {
	"segment", "txid", "id", "idempotency_key", "event", "queued_at"
};

/* The columns of 0.1's monk.outbox table, in order. */
static const char *const legacy_columns[] = {
	"id", "idempotency_key", "event", "queued_at",
	"attempts", "next_attempt_at", "last_status", "last_error"
};
#define LEGACY_NATTS lengthof(legacy_columns)

/*
 * Cached OIDs of the outbox's relations.  An invalidation only marks them
 * stale: they are looked up again, all together, by the next MonkOutboxLookup,
 * so that an invalidation processed in the middle of a lookup or of an
 * insert (a segment truncated by the worker sends one) never leaves a
 * half-cleared cache behind.
 */
typedef struct MonkOutboxRelations
{
	Oid			seqid;
	Oid			segment[MONK_SEGMENTS];
	Oid			state;
	Oid			legacy;			/* 0.1's monk.outbox table */
} MonkOutboxRelations;

static MonkOutboxRelations rels;
static bool rels_valid = false;
static bool inval_registered = false;

static void
MonkOutboxInvalidate(Datum arg, Oid relid)
{
	rels_valid = false;
}

/*
 * Look up (when stale) the sequence, the segments and the state of the
 * outbox, or 0.1's table.  Raises when the extension is not installed here.
 */
static void
MonkOutboxLookup(void)
{
	MonkOutboxRelations found;
	Oid			nsp;

	if (rels_valid)
		return;
	if (!inval_registered)
	{
		CacheRegisterRelcacheCallback(MonkOutboxInvalidate, (Datum) 0);
		inval_registered = true;
	}
	memset(&found, 0, sizeof(found));
	nsp = get_namespace_oid("monk", true);
	if (OidIsValid(nsp))
	{
		found.state = get_relname_relid("queue_state", nsp);
		for (int i = 0; i < MONK_SEGMENTS; i++)
		{
			char		name[NAMEDATALEN];

			snprintf(name, sizeof(name), "log_%d", i);
			found.segment[i] = get_relname_relid(name, nsp);
		}
		if (!OidIsValid(found.state))
		{
			found.legacy = get_relname_relid("outbox", nsp);
			if (OidIsValid(found.legacy) && get_rel_relkind(found.legacy) != RELKIND_RELATION)
				found.legacy = InvalidOid;
		}
		found.seqid = get_relname_relid("outbox_id_seq", nsp);
	}
	if (!OidIsValid(found.seqid) || (!OidIsValid(found.state) && !OidIsValid(found.legacy)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the monk outbox does not exist in database \"%s\"",
						get_database_name(MyDatabaseId)),
				 errhint("Run CREATE EXTENSION monk in this database.")));
	rels = found;
	rels_valid = true;
}

/* Check that a relation still has the columns this code writes. */
static void
CheckShape(Relation rel, const char *const *columns, int ncolumns)
{
	TupleDesc	desc = RelationGetDescr(rel);
	bool		ok = desc->natts == ncolumns;

	for (int i = 0; ok && i < ncolumns; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		ok = !att->attisdropped && strcmp(NameStr(att->attname), columns[i]) == 0;
	}
	if (!ok)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table monk.%s has been altered", RelationGetRelationName(rel)),
				 errhint("Recreate the extension, or restore the table's columns as monk created them.")));
}

/* The id of the next event, from the outbox's sequence (read-write only). */
int64
MonkOutboxNextId(void)
{
	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot queue an event in a read-only transaction"),
				 RecoveryInProgress() ?
				 errhint("Events are queued on the primary server.") : 0));

	MonkOutboxLookup();
	return nextval_internal(rels.seqid, false);
}

/*
 * The segment new events go to: the worker publishes it in shared memory;
 * before it has (it is starting, or this database has none), the one
 * recorded in monk.queue_state.
 */
static int
CurrentSegment(void)
{
	MonkWorkerSlot *slot = MonkSlotForDatabase(MyDatabaseId);
	Relation	rel;
	SysScanDesc scan;
	HeapTuple	tuple;
	int			segment = 0;

	if (slot)
	{
		uint32		published = pg_atomic_read_u32(&slot->segment);

		if (published < MONK_SEGMENTS)
			return (int) published;
	}
	rel = table_open(rels.state, AccessShareLock);
	scan = systable_beginscan(rel, InvalidOid, false, GetActiveSnapshot(), 0, NULL);
	if ((tuple = systable_getnext(scan)) != NULL)
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, 4, RelationGetDescr(rel), &isnull);

		if (!isnull)
			segment = DatumGetInt16(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	if (segment < 0 || segment >= MONK_SEGMENTS)
		segment = 0;
	return segment;
}

/* How many events, or bytes of them, a bulk appender buffers at most. */
#define APPEND_BUFFER_TUPLES 1000
#define APPEND_BUFFER_BYTES (64 * 1024)

/*
 * Events being appended by one caller: the segment (or 0.1's table) and its
 * indexes opened once, for one event (monk_send) or a statement's worth of
 * them (monk_capture at statement level).
 */
struct MonkOutboxAppender
{
	Relation	rel;
	bool		legacy;			/* 0.1's monk.outbox table */
	int			segment;
	uint64		txid;
	int			nindexes;
	Relation   *indexes;
	IndexInfo **infos;
	TupleTableSlot *slot;		/* a single event's tuple */
	/* many events: tuples buffered, written by heap_multi_insert */
	BulkInsertState bistate;
	MemoryContext cxt;			/* the buffered tuples */
	StringInfoData key;			/* the text datums of the event being appended */
	StringInfoData event;
	TupleTableSlot *buffered[APPEND_BUFFER_TUPLES];
	int			nbuffered;
	Size		buffered_bytes;
};

/* Open the indexes of the appender's relation, checking they are plain. */
static void
OpenIndexes(MonkOutboxAppender *ap)
{
	List	   *list = RelationGetIndexList(ap->rel);
	ListCell   *lc;
	int			i = 0;

	ap->nindexes = list_length(list);
	ap->indexes = palloc(sizeof(Relation) * Max(ap->nindexes, 1));
	ap->infos = palloc(sizeof(IndexInfo *) * Max(ap->nindexes, 1));
	foreach(lc, list)
	{
		Relation	index = index_open(lfirst_oid(lc), RowExclusiveLock);
		IndexInfo  *info = BuildIndexInfo(index);

		if (info->ii_Expressions != NIL || info->ii_Predicate != NIL || !info->ii_ReadyForInserts)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("index \"%s\" on monk.%s is not supported",
							RelationGetRelationName(index), RelationGetRelationName(ap->rel)),
					 errhint("Indexes on monk's outbox must be plain column indexes; drop this one.")));
		ap->indexes[i] = index;
		ap->infos[i++] = info;
	}
	list_free(list);
	ap->slot = MakeSingleTupleTableSlot(RelationGetDescr(ap->rel), &TTSOpsHeapTuple);
}

/*
 * Start appending events in the current transaction.  The segment's lock is
 * held until the transaction ends, so that the segment cannot be truncated
 * under the events.  "bulk": many events will follow (a bulk-insert buffer
 * strategy is used).
 */
MonkOutboxAppender *
MonkOutboxAppendBegin(bool bulk)
{
	MonkOutboxAppender *ap = palloc0(sizeof(MonkOutboxAppender));
	Oid			relid;

	MonkOutboxLookup();
	ap->legacy = OidIsValid(rels.legacy);
	if (ap->legacy)
		relid = rels.legacy;
	else
	{
		/* the transaction id first: a segment read after it is current */
		ap->txid = U64FromFullTransactionId(GetTopFullTransactionId());
		pg_memory_barrier();
		ap->segment = CurrentSegment();
		relid = rels.segment[ap->segment];
		if (!OidIsValid(relid))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("segment monk.log_%d of the outbox does not exist", ap->segment),
					 errhint("Recreate the extension.")));
	}
	initStringInfo(&ap->key);
	initStringInfo(&ap->event);
	ap->rel = table_open(relid, RowExclusiveLock);
	if (ap->legacy)
		CheckShape(ap->rel, legacy_columns, LEGACY_NATTS);
	else
		CheckShape(ap->rel, log_columns, LOG_NATTS);
	OpenIndexes(ap);
	if (bulk)
	{
		ap->bistate = GetBulkInsertState();
		ap->cxt = AllocSetContextCreate(CurrentMemoryContext, "monk outbox appender",
										ALLOCSET_DEFAULT_SIZES);
		for (int i = 0; i < APPEND_BUFFER_TUPLES; i++)
			ap->buffered[i] = MakeSingleTupleTableSlot(RelationGetDescr(ap->rel), &TTSOpsHeapTuple);
	}
	return ap;
}

/* Insert the index entries of a tuple stored in slot, written at slot->tts_tid. */
static void
InsertIndexEntries(MonkOutboxAppender *ap, TupleTableSlot *slot)
{
	for (int i = 0; i < ap->nindexes; i++)
	{
		Datum		ivalues[INDEX_MAX_KEYS];
		bool		inulls[INDEX_MAX_KEYS];
		Relation	index = ap->indexes[i];

		FormIndexDatum(ap->infos[i], slot, NULL, ivalues, inulls);
		index_insert(index, ivalues, inulls, &slot->tts_tid, ap->rel,
					 index->rd_index->indisunique ? UNIQUE_CHECK_YES : UNIQUE_CHECK_NO,
					 false, ap->infos[i]);
	}
}

/* Write the buffered tuples: one heap_multi_insert, then their index entries. */
static void
FlushBuffered(MonkOutboxAppender *ap)
{
	if (ap->nbuffered == 0)
		return;
	heap_multi_insert(ap->rel, ap->buffered, ap->nbuffered, GetCurrentCommandId(true), 0, ap->bistate);
	for (int i = 0; i < ap->nbuffered; i++)
	{
		InsertIndexEntries(ap, ap->buffered[i]);
		ExecClearTuple(ap->buffered[i]);
	}
	ap->nbuffered = 0;
	ap->buffered_bytes = 0;
	MemoryContextReset(ap->cxt);
}

/* Insert a tuple into the appender's heap and its indexes (or buffer it). */
static void
InsertTuple(MonkOutboxAppender *ap, HeapTuple tuple)
{
	if (ap->bistate)
	{
		ExecStoreHeapTuple(tuple, ap->buffered[ap->nbuffered++], true);
		ap->buffered_bytes += tuple->t_len;
		if (ap->nbuffered == APPEND_BUFFER_TUPLES || ap->buffered_bytes >= APPEND_BUFFER_BYTES)
			FlushBuffered(ap);
		return;
	}
	simple_heap_insert(ap->rel, tuple);
	ExecStoreHeapTuple(tuple, ap->slot, false);
	ap->slot->tts_tid = tuple->t_self;
	InsertIndexEntries(ap, ap->slot);
	ExecClearTuple(ap->slot);
	heap_freetuple(tuple);
}

/* A text datum of s in buf, whose memory is reused from event to event. */
static Datum
TextDatum(StringInfo buf, const char *s, int len)
{
	resetStringInfo(buf);
	enlargeStringInfo(buf, VARHDRSZ + len);
	SET_VARSIZE(buf->data, VARHDRSZ + len);
	memcpy(VARDATA(buf->data), s, len);
	return PointerGetDatum(buf->data);
}

/* Append one event, validated and rendered by the caller. */
void
MonkOutboxAppend(MonkOutboxAppender *ap, int64 id, const char *key, int key_len,
				 const char *event, int event_len, TimestampTz queued_at)
{
	Datum		values[Max(LOG_NATTS, LEGACY_NATTS)];
	bool		nulls[Max(LOG_NATTS, LEGACY_NATTS)];
	Datum		keyd = TextDatum(&ap->key, key, key_len);
	Datum		eventd = TextDatum(&ap->event, event, event_len);
	MemoryContext outer = CurrentMemoryContext;
	HeapTuple	tuple;

	memset(nulls, false, sizeof(nulls));
	if (ap->legacy)
	{
		values[0] = Int64GetDatum(id);
		values[1] = keyd;
		values[2] = eventd;
		values[3] = TimestampTzGetDatum(queued_at);
		values[4] = Int32GetDatum(0);
		nulls[5] = nulls[6] = nulls[7] = true;
	}
	else
	{
		values[LOG_SEGMENT] = Int16GetDatum(ap->segment);
		values[LOG_TXID] = Int64GetDatum((int64) ap->txid);
		values[LOG_ID] = Int64GetDatum(id);
		values[LOG_KEY] = keyd;
		values[LOG_EVENT] = eventd;
		values[LOG_QUEUED_AT] = TimestampTzGetDatum(queued_at);
	}
	if (ap->cxt)
		MemoryContextSwitchTo(ap->cxt);
	tuple = heap_form_tuple(RelationGetDescr(ap->rel), values, nulls);
	MemoryContextSwitchTo(outer);
	InsertTuple(ap, tuple);
}

/* Close what MonkOutboxAppendBegin opened (the locks stay until the end of the transaction). */
void
MonkOutboxAppendEnd(MonkOutboxAppender *ap)
{
	if (ap->bistate)
	{
		FlushBuffered(ap);
		for (int i = 0; i < APPEND_BUFFER_TUPLES; i++)
			ExecDropSingleTupleTableSlot(ap->buffered[i]);
		FreeBulkInsertState(ap->bistate);
		MemoryContextDelete(ap->cxt);
	}
	ExecDropSingleTupleTableSlot(ap->slot);
	pfree(ap->key.data);
	pfree(ap->event.data);
	for (int i = 0; i < ap->nindexes; i++)
		index_close(ap->indexes[i], NoLock);
	table_close(ap->rel, NoLock);
	pfree(ap->indexes);
	pfree(ap->infos);
	pfree(ap);
}

/* Append one event to the outbox in the current transaction. */
void
MonkOutboxInsert(int64 id, const char *key, const char *event, int event_len,
				 TimestampTz queued_at)
{
	MonkOutboxAppender *ap = MonkOutboxAppendBegin(false);

	MonkOutboxAppend(ap, id, key, strlen(key), event, event_len, queued_at);
	MonkOutboxAppendEnd(ap);
}

/*
 * With monk.max_outbox_events set, refuse a new event when the outbox holds
 * that many.  The depth comes from the worker's figures in shared memory
 * (events queued when it started, committed since, settled since): a
 * lookup, so that the check stays cheap whatever the backlog.  Before the
 * worker has counted, the segments' live row counts from the statistics
 * stand in for it.
 */
void
MonkOutboxCheckCapacity(void)
{
	MonkWorkerSlot *slot;
	int64		depth = -1;

	if (monk_max_outbox_events <= 0)
		return;

	MonkOutboxLookup();
	slot = MonkSlotForDatabase(MyDatabaseId);
	if (slot)
		depth = MonkSlotDepth(slot);
	if (depth < 0)
	{
		MonkOutboxRelations r = rels;

		depth = 0;
		for (int i = 0; i < MONK_SEGMENTS; i++)
		{
			Oid			relid = OidIsValid(r.legacy) ? r.legacy : r.segment[i];
			PgStat_StatTabEntry *stats = OidIsValid(relid) ? pgstat_fetch_stat_tabentry(relid) : NULL;

			depth += stats ? MonkStatLiveTuples(stats) : 0;
			if (OidIsValid(r.legacy))
				break;
		}
	}
	if (depth >= monk_max_outbox_events)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("the monk outbox is full"),
				 errdetail("The outbox holds about " INT64_FORMAT " events; monk.max_outbox_events is %d.",
						   depth, monk_max_outbox_events),
				 errhint("Check monk.status: the worker may be unable to reach the Events API. Raise monk.max_outbox_events to queue more.")));
}

/* The relation of a segment, for the consumer's truncation. */
Oid
MonkOutboxSegmentOid(int segment)
{
	Assert(segment >= 0 && segment < MONK_SEGMENTS);
	MonkOutboxLookup();
	return rels.segment[segment];
}
