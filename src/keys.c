/*
 * keys.c
 *		The prefix of the idempotency keys monk assigns by default: unique to
 *		the database that queues the events, across the databases of a
 *		cluster and across clusters.
 *
 * monk.idempotency_prefix, when set, is the prefix, as in 0.3.  Unset (the
 * default), the prefix is "sync_", the database's id and "_"
 * (sync_5f0c2a9e13b7d4a8_outbox_42): the id is random, drawn when the
 * extension is created or updated to 0.4, and kept in monk.database_id,
 * which pg_dump carries with the database, so that a restore derives the
 * keys the original did.  Inserting a row there replaces the id (a copy
 * that exports on its own): a trigger deletes the old one; where triggers
 * do not fire (pg_restore --data-only --disable-triggers), the row inserted
 * last (by its raw xmin) is the id.  A session takes a new id at the start of
 * its next transaction (a relcache invalidation of the table), never within
 * one: a row queued twice in a transaction keeps one key.
 *
 * 0.3 had no id: its default prefix was "sync_" alone, in every database.
 * The keys of rows already billed must not change, or a correction or a
 * re-export would bill them twice: an export cursor made under 0.3
 * (monk.sync_state.legacy_keys), a new cursor of a source 0.3 exported
 * (monk.export_legacy) and a table captured under 0.3 (monk.capture_legacy)
 * keep 0.3's prefix.  Events queued by monk_send hold
 * their key already.  Until the extension is updated to 0.4 in a database,
 * that database keeps 0.3's keys.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/transam.h"
#include "access/xact.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "keys.h"
#include "settings.h"
#include "xact.h"

PG_FUNCTION_INFO_V1(monk_database_id_changed);

#define LEGACY_PREFIX "sync_"

static char *kept_prefix = NULL;	/* "sync_<id>_", in TopMemoryContext */
static Oid	kept_relid = InvalidOid;
static bool inval_registered = false;
static bool used_in_xact = false;	/* kept_prefix made a key in this
									 * transaction */
static bool stale = false;		/* the table changed: drop it at the end */

static void
DropPrefix(void)
{
	if (kept_prefix != NULL)
		pfree(kept_prefix);
	kept_prefix = NULL;
	stale = false;
}

static void
ForgetPrefix(Datum arg, Oid relid)
{
	if (kept_prefix != NULL && (!OidIsValid(relid) || relid == kept_relid))
	{
		if (used_in_xact)
			stale = true;		/* at the end of the transaction */
		else
			DropPrefix();
	}
}

static void
EndOfXact(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			used_in_xact = false;
			if (stale)
				DropPrefix();
			break;
		default:
			break;
	}
}

/*
 * Call fn with the text value of column "column" of each row of table relid
 * (a few rows), until it returns true; returns whether it did.
 */
static bool
ScanColumn(Oid relid, const char *column, bool (*fn) (const char *value, TransactionId xmin, void *arg),
		   void *arg)
{
	Relation	rel = table_open(relid, AccessShareLock);
	AttrNumber	attnum = get_attnum(relid, column);
	Snapshot	snap = RegisterSnapshot(GetLatestSnapshot());
	SysScanDesc scan = systable_beginscan(rel, InvalidOid, false, snap, 0, NULL);
	HeapTuple	tuple;
	bool		done = false;

	if (attnum == InvalidAttrNumber)
		elog(ERROR, "column %s of monk's table %s does not exist", column, RelationGetRelationName(rel));
	while (!done && (tuple = systable_getnext(scan)) != NULL)
	{
		bool		isnull;
		Datum		d = heap_getattr(tuple, attnum, RelationGetDescr(rel), &isnull);

		if (!isnull)
			done = fn(TextDatumGetCString(d), HeapTupleHeaderGetRawXmin(tuple->t_data), arg);
	}
	systable_endscan(scan);
	UnregisterSnapshot(snap);
	table_close(rel, AccessShareLock);
	return done;
}

/*
 * The id: the row inserted last, by its raw xmin, which freezing keeps (the
 * frozen xmin of two rows would tie).  Two fixed xids compare the same way
 * forever: the order holds for rows inserted within 2^31 transactions of
 * each other.
 */
typedef struct NewestId
{
	const char *id;
	TransactionId xmin;
} NewestId;

static bool
TakeId(const char *value, TransactionId xmin, void *arg)
{
	NewestId   *n = arg;

	if (n->id == NULL || TransactionIdFollows(xmin, n->xmin))
	{
		n->id = value;
		n->xmin = xmin;
	}
	return false;				/* look at every row */
}

/*
 * The prefix of a default key: monk.idempotency_prefix when set; else
 * 0.3's "sync_" for legacy keys, or "sync_", the database's id and "_".
 */
const char *
MonkKeyPrefix(bool legacy)
{
	Oid			relid;
	NewestId	newest = {NULL, InvalidTransactionId};

	if (monk_idempotency_prefix != NULL && monk_idempotency_prefix[0] != '\0')
		return monk_idempotency_prefix;
	if (legacy)
		return LEGACY_PREFIX;
	if (kept_prefix != NULL)
	{
		used_in_xact = true;
		return kept_prefix;
	}

	relid = MonkTableOid("database_id");
	if (!OidIsValid(relid))
		return LEGACY_PREFIX;	/* not updated to 0.4 yet */
	if (!inval_registered)
	{
		CacheRegisterRelcacheCallback(ForgetPrefix, (Datum) 0);
		RegisterXactCallback(EndOfXact, NULL);
		inval_registered = true;
	}
	(void) ScanColumn(relid, "id", TakeId, &newest);
	if (newest.id == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("monk.database_id is empty"),
				 errdetail("Default idempotency keys begin with the database's id, kept in monk.database_id."),
				 errhint("As a superuser, draw one with INSERT INTO monk.database_id DEFAULT VALUES (after a restore, restore its row instead).")));
	kept_prefix = MemoryContextStrdup(TopMemoryContext, psprintf(LEGACY_PREFIX "%s_", newest.id));
	kept_relid = relid;
	used_in_xact = true;
	return kept_prefix;
}

static bool
SameSource(const char *value, TransactionId xmin, void *arg)
{
	return strcmp(value, (const char *) arg) == 0;
}

/*
 * Did 0.3 capture the table named source (as keys name it)?  Its rows then
 * keep 0.3's keys.  True too while the extension is older than 0.4.
 */
bool
MonkCaptureLegacy(const char *source)
{
	Oid			relid = MonkTableOid("capture_legacy");

	if (!OidIsValid(relid))
		return !OidIsValid(MonkTableOid("database_id"));
	return ScanColumn(relid, "source", SameSource, (void *) source);
}

/*
 * Trigger of monk.database_id: before a row is inserted, the old one goes
 * (the new id replaces it, as a restore does); after any change, every
 * session forgets the id it kept.
 */
Datum
monk_database_id_changed(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("monk.database_id_changed() must be called as a trigger")));
	CacheInvalidateRelcache(td->tg_relation);
	if (TRIGGER_FIRED_BEFORE(td->tg_event) && TRIGGER_FIRED_FOR_ROW(td->tg_event) &&
		TRIGGER_FIRED_BY_INSERT(td->tg_event))
	{
		if (SPI_connect() != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect failed");
		if (SPI_execute("DELETE FROM monk.database_id", false, 0) != SPI_OK_DELETE)
			elog(ERROR, "deleting the old database id failed");
		SPI_finish();
		return PointerGetDatum(td->tg_trigtuple);
	}
	return PointerGetDatum(NULL);
}
