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
 * written as their owner (store.c), so that a role needs only EXECUTE on the
 * function and SELECT on its source.  The cursor row is locked for the whole
 * export: a second export of the same cursor fails at once.  Everything the
 * export records is part of the caller's transaction.
 */
#include "postgres.h"

#include "mb/pg_wchar.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"
#include "utils/portal.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/wait_event.h"

#include "event.h"
#include "inflight.h"
#include "keys.h"
#include "progress.h"
#include "store.h"
#include "sender.h"
#include "settings.h"
#include "source.h"
#include "standby.h"

PG_FUNCTION_INFO_V1(monk_batch_export);

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
	const char *key_prefix;		/* of default keys: the cursor's (keys.c) */
	int			batch_size;		/* rows per slice */
	MonkSender *sender;
	dlist_head	slices;			/* in id order, not yet behind the cursor */
	int			nslices_inflight;
	MonkCursorPos pos;			/* the cursor: its last id moves past the rows
								 * accepted or dead-lettered, in order */
	int64		start_id;		/* where it stood (pos.started: it had) */
	bool		started;
	int64		max_events;		/* 0: no limit */
	double		rows_estimated; /* by the planner; < 0: unknown */
	int64		read;			/* rows read */
	bool		has_prev;		/* the id of the row read last */
	int64		prev_id;
	bool		has_scanned;	/* the ids past the cursor looked at for rows
								 * not seen: up to scanned_to */
	int64		scanned_to;
	MonkInFlight *inflight;		/* NULL: rows not seen are not looked for */
	int64	   *unseen;			/* ids of rows not seen, past the cursor */
	int			nunseen;
	int			unseen_cap;
	int64	   *pending_read;	/* pending ids read again */
	int			npending_read;
	int			batches;
	int64		sent;
	int64		failed;
	bool		delivery_failed;
	long		auth_status;
	char		auth_body[MONK_RESPONSE_MAX + 1];
} Export;

/* Dead-letter a row of the source (invalid, or refused by the API). */
static void
DeadLetterRow(Export *ex, MonkDeadLetter *dl)
{
	dl->source = ex->cursor_name;
	dl->attempts = 1;
	MonkDeadLetterInsert(dl);
	ex->failed++;
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
		/* a slice of pending ids only stands below the cursor */
		if (!ex->pos.started || slice->last_id > ex->pos.last_id)
			ex->pos.last_id = slice->last_id;
		ex->pos.started = true;
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
	MonkDeadLetter dl = {0};
	char	   *event = pnstrdup(chunk->data.data + chunk->off[i], chunk->len[i]);
	Jsonb	   *jb;
	JsonbValue *key;

	/* the key is in the rendered event */
	jb = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(event)));
	key = getKeyJsonValueFromContainer(&jb->root, "idempotencyKey", strlen("idempotencyKey"), NULL);

	dl.source_id = chunk->ids[i];
	dl.key = key ? pnstrdup(key->val.string.val, key->val.string.len) : "";
	dl.event = event;
	dl.has_status = true;
	dl.status = status;
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
			 errdetail("Last error: %s", MonkTextForDatabase(error)),
			 errhint("The cursor stays before this batch: the next run resumes there, and the keys make any event sent twice count once.")));
	return false;
}

static void
OnAuthFailed(void *arg, MonkBatch *batch, long status, const char *body)
{
	Export	   *ex = arg;

	/* -1: no answer, the certificate was refused */
	ex->auth_status = status == 0 ? -1 : status;
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

/* (an export reports through its result row and WARNINGs, not monk.status) */
static const MonkSenderOps export_ops = {
	.accepted = OnAccepted,
	.refused = OnRefused,
	.parked = OnParked,
	.auth_failed = OnAuthFailed,
	.chunk_done = OnChunkDone,
};

static void
DuplicateId(int64 id)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNIQUE_VIOLATION),
			 errmsg("the source has several rows with id " INT64_FORMAT, id),
			 errdetail("The export reads rows in id order past its cursor, and an id is the row's default key."),
			 errhint("Give each row its own id (in a view, for example row_number() over a unique order); nothing past the previous id was sent.")));
}

/*
 * The rows past the cursor up to the last one read (seen: the ids read, in
 * order) that the export's snapshot does not see -- inserted by a
 * transaction in progress, or committed since -- are found and kept for the
 * next run (inflight.h).
 */
static void
FindUnseen(Export *ex, const int64 *seen, int nseen)
{
	bool		has_lo = ex->has_scanned || ex->started;
	int64		lo = ex->has_scanned ? ex->scanned_to : ex->start_id;

	if (ex->inflight == NULL || nseen == 0)
		return;
	MonkInFlightFind(ex->inflight, has_lo, lo, seen[nseen - 1], seen, nseen,
					 &ex->unseen, &ex->nunseen, &ex->unseen_cap);
	ex->has_scanned = true;
	ex->scanned_to = seen[nseen - 1];
}

/*
 * The pending ids the cursor keeps for the next run: those of the rows this
 * run found but did not see, below where the cursor stands now, and the
 * pending ids it was given that it did not read and that still exist (a
 * transaction that inserted one is still in progress).  After a failed
 * batch every pending id it was given is kept: reading one again is harmless.
 */
static void
KeepPending(Export *ex)
{
	int64	   *old = ex->pos.pending;
	int			nold = ex->pos.npending;
	int			cap = nold + ex->nunseen;
	int64	   *keep = palloc(sizeof(int64) * Max(cap, 1));
	int			n = 0;

	/* max_events may have ended the run before it read every pending id */
	bool		cut = ex->max_events > 0 && ex->read >= ex->max_events;

	qsort(ex->pending_read, ex->npending_read, sizeof(int64), MonkCompareIds);
	for (int i = 0; i < nold; i++)
	{
		bool		read = bsearch(&old[i], ex->pending_read, ex->npending_read, sizeof(int64), MonkCompareIds) != NULL;

		/*
		 * Unread: kept while its row exists and is not seen (still being
		 * inserted), or exists at all when the run was cut short; a row the
		 * run saw but did not read is one its view leaves out.
		 */
		if (ex->delivery_failed ||
			(!read && ex->inflight != NULL && MonkInFlightExists(ex->inflight, old[i], !cut)))
			keep[n++] = old[i];
	}
	for (int i = 0; i < ex->nunseen; i++)
	{
		if (ex->pos.started && ex->unseen[i] <= ex->pos.last_id)
			keep[n++] = ex->unseen[i];
	}
	qsort(keep, n, sizeof(int64), MonkCompareIds);
	ex->pos.npending = 0;
	for (int i = 0; i < n; i++)
	{
		if (ex->pos.npending == 0 || keep[i] != keep[ex->pos.npending - 1])
			keep[ex->pos.npending++] = keep[i];
	}
	ex->pos.pending = keep;
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
	int64	   *seen = MemoryContextAlloc(old, sizeof(int64) * Max(n, 1));
	int			nseen = 0;

	slice->chunk = MonkChunkCreate(cxt, (int) n);
	slice->chunk->arg = slice;
	for (uint64 r = 0; r < n; r++)
	{
		MonkSourceRow row;
		MonkEventError err;
		StringInfoData json;
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(tt->vals[r], tt->tupdesc, 1, &isnull));

		/* ids are the cursor and the default key: two rows may not share one */
		if (!isnull && ex->has_prev && id == ex->prev_id)
			DuplicateId(id);
		if (!isnull)
		{
			ex->has_prev = true;
			ex->prev_id = id;
			if (ex->started && id <= ex->start_id)
				ex->pending_read[ex->npending_read++] = id;
			else
				seen[nseen++] = id;
		}

		/* what a row needs lives until the next row: memory stays flat */
		MemoryContextReset(rowcxt);
		if (!MonkSourceRowRead(tt->vals[r], tt->tupdesc, now, ex->key_prefix, &row, &err))
		{
			MonkDeadLetter dl = {0};

			dl.source_id = row.id;
			dl.key = row.key;
			dl.event = row.json;
			dl.error = err.detail ? psprintf("invalid event: %s (%s)", err.message, err.detail)
				: psprintf("invalid event: %s", err.message);
			DeadLetterRow(ex, &dl);
		}
		else
		{
			char	   *utf8;
			char	   *why = NULL;

			initStringInfo(&json);
			(void) MonkEventRender(&json, &row.ev, row.key, 0);
			/* the API reads UTF-8 */
			utf8 = MonkToUtf8NoError(json.data, json.len);
			if (utf8 == NULL)
				why = pstrdup("invalid event: a character has no equivalent in UTF-8");
			else if (GetDatabaseEncoding() == PG_SQL_ASCII && !pg_verify_mbstr(PG_UTF8, json.data, json.len, true))
				why = pstrdup("invalid event: its text is not valid UTF-8 (a SQL_ASCII database sends its bytes as they are)");
			else if (!MonkEventFits(json.len, &err))
				why = psprintf("invalid event: %s (%s)", err.message, err.detail);
			if (why == NULL)
				MonkChunkAdd(slice->chunk, row.id, utf8, utf8 == json.data ? json.len : strlen(utf8), now);
			else
			{
				MonkDeadLetter dl = {0};

				dl.source_id = row.id;
				dl.key = row.key;
				dl.event = json.data;
				dl.error = why;
				DeadLetterRow(ex, &dl);
			}
		}
		if (r == 0)
			slice->first_id = row.id;
		slice->last_id = row.id;
	}
	MemoryContextSwitchTo(old);
	MemoryContextDelete(rowcxt);
	FindUnseen(ex, seen, nseen);
	pfree(seen);
	if (slice->chunk->n == 0)
	{
		MonkChunkFree(slice->chunk);
		slice->chunk = NULL;
		slice->settled = true;
	}
	return slice;
}

/* Publish the export's figures in monk.export_progress. */
static void
ReportProgress(Export *ex, MonkProgressState state)
{
	MonkProgress p;

	p.rows_read = ex->read;
	p.events_sent = ex->sent;
	p.events_failed = ex->failed;
	p.batches = ex->batches;
	p.cursor_started = ex->pos.started;
	p.cursor_last_id = ex->pos.last_id;
	p.state = state;
	MonkProgressUpdate(&p);
}

/* Tell the caller how far the export is (every MONK_PROGRESS_NOTICE_MS). */
static void
ProgressNotice(Export *ex, TimestampTz started)
{
	long		secs;
	int			usecs;
	double		elapsed;
	int64		done = ex->sent + ex->failed;
	char		estimate[64] = "";

	TimestampDifference(started, GetCurrentTimestamp(), &secs, &usecs);
	elapsed = secs + usecs / 1000000.0;
	/* the planner can guess wrong (a view's filter, a table not analyzed) */
	if (ex->rows_estimated > 0 && done <= ex->rows_estimated)
		snprintf(estimate, sizeof(estimate), " of about %.0f (%.0f%%)", ex->rows_estimated,
				 100.0 * done / ex->rows_estimated);
	else if (ex->rows_estimated >= 0)
		snprintf(estimate, sizeof(estimate), " (%.0f were estimated)", ex->rows_estimated);
	ereport(NOTICE,
			(errmsg("monk_batch_export: " INT64_FORMAT " rows done%s, %.0f rows/s; " INT64_FORMAT " events sent, " INT64_FORMAT " failed; cursor at %s",
					done, estimate, elapsed > 0 ? done / elapsed : 0.0, ex->sent, ex->failed,
					ex->pos.started ? psprintf(INT64_FORMAT, ex->pos.last_id) : "its start"),
			 errdetail("SELECT * FROM monk.export_progress shows every export running.")));
}

/*
 * Read the source slice by slice, keeping up to monk.max_parallel_requests
 * slices in flight, until the source is exhausted, a batch fails for good or
 * the API refuses the key.
 */
static void
ExportLoop(Export *ex, Portal portal, MemoryContext cxt)
{
	TimestampTz started = GetCurrentTimestamp();
	TimestampTz last_notice = started;
	bool		source_done = false;

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();

		/* read the next slice while there is room for it */
		while (!source_done && !ex->delivery_failed && ex->auth_status == 0 &&
			   ex->nslices_inflight < monk_max_parallel_requests)
		{
			ExportSlice *slice;
			int64		want = ex->batch_size;

			if (ex->max_events > 0 && ex->read + want > ex->max_events)
				want = ex->max_events - ex->read;
			if (want == 0)
			{
				/* max_events read: the next row must not share the last id */
				SPI_cursor_fetch(portal, true, 1);
				if (SPI_processed == 1)
				{
					bool		isnull;
					int64		id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));

					if (!isnull && ex->has_prev && id == ex->prev_id)
						DuplicateId(id);
				}
				SPI_freetuptable(SPI_tuptable);
				source_done = true;
				break;
			}
			SPI_cursor_fetch(portal, true, want);
			if (SPI_processed == 0)
			{
				source_done = true;
				break;
			}
			ex->read += SPI_processed;
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
		if (ex->auth_status != 0 && MonkSenderInflight(ex->sender) == 0)
			break;

		MonkSenderDispatch(ex->sender);
		MonkSenderWait(ex->sender, MonkSenderNextWakeMs(ex->sender), PG_WAIT_EXTENSION);
		ReportProgress(ex, MONK_PROGRESS_SENDING);

		if (TimestampDifferenceExceeds(last_notice, GetCurrentTimestamp(), MONK_PROGRESS_NOTICE_MS))
		{
			last_notice = GetCurrentTimestamp();
			ProgressNotice(ex, started);
		}
	}
}

/*
 * The rows the export will read, as the planner estimated them for the
 * source's query past the cursor (its plan was made with the cursor's value);
 * -1 when there is no plan to ask.
 */
static double
EstimateRows(Portal portal, int64 max_events)
{
	PlannedStmt *stmt = PortalGetPrimaryStmt(portal);
	double		rows;

	if (stmt == NULL || stmt->planTree == NULL)
		return -1;
	rows = stmt->planTree->plan_rows;
	if (max_events > 0 && rows > max_events)
		rows = max_events;
	/* the planner's guesses go up to 1e100: keep it a bigint */
	return Min(rows, 1e18);
}

/* Check the arguments of monk_batch_export a caller can get wrong. */
static void
CheckArguments(Export *ex, bool all_events, int64 max_events)
{
	if (ex->batch_size < 1 || ex->batch_size > MONK_MAX_BATCH_SIZE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("batch_size must be between 1 and %d", MONK_MAX_BATCH_SIZE),
				 errdetail("The value is %d.", ex->batch_size),
				 errhint("The Events API takes at most %d events per request.", MONK_MAX_BATCH_SIZE)));
	if (!all_events && max_events < 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("max_events must be at least 1"),
				 errdetail("The value is " INT64_FORMAT ".", max_events),
				 errhint("Pass NULL to export everything past the cursor.")));
	if (ex->cursor_name[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cursor_name must not be empty"),
				 errhint("Pass NULL to use the source's qualified name.")));
	/* an export's dead letters carry its cursor's name as their source */
	if (strcmp(ex->cursor_name, "outbox") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("cursor_name \"outbox\" is reserved"),
				 errdetail("Dead letters of the outbox have source \"outbox\"; an export's have its cursor's name."),
				 errhint("Pass another name, or NULL to use the source's qualified name.")));
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
	char	   *query;
	int			positions[MONK_SOURCE_NCOLUMNS];
	Portal		portal;
	MemoryContext cxt;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, false};

	source = MonkCheckSource(PG_ARGISNULL(0) ? InvalidOid : PG_GETARG_OID(0));

	/*
	 * Rows this transaction wrote would be seen, and sent, though it may
	 * still roll back: an export runs in a transaction that wrote nothing.
	 */
	if (TransactionIdIsValid(GetTopTransactionIdIfAny()))
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("monk_batch_export must run in a transaction that has written nothing"),
				 errdetail("Rows this transaction wrote could be sent, and then rolled back."),
				 errhint("Run it in a transaction of its own, as pg_cron does; one export per transaction.")));
	memset(&ex, 0, sizeof(ex));
	ex.batch_size = batch_size;
	ex.cursor_name = PG_ARGISNULL(3) ? MonkSourceName(source) : text_to_cstring(PG_GETARG_TEXT_PP(3));
	CheckArguments(&ex, PG_ARGISNULL(2), max_events);
	InitMaterializedSRF(fcinfo, 0);

	ex.max_events = max_events;
	dlist_init(&ex.slices);

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	MonkCursorLock(ex.cursor_name, MonkSourceName(source), &ex.pos);
	ex.key_prefix = MonkKeyPrefix(ex.pos.legacy_keys);
	ex.started = ex.pos.started;
	ex.start_id = ex.pos.last_id;
	/* pending ids past a cursor moved back by hand are read past it anyway */
	{
		int			n = 0;

		for (int i = 0; i < ex.pos.npending; i++)
		{
			if (ex.pos.started && ex.pos.pending[i] <= ex.pos.last_id)
				ex.pos.pending[n++] = ex.pos.pending[i];
		}
		ex.pos.npending = n;
	}
	ex.pending_read = palloc(sizeof(int64) * Max(ex.pos.npending, 1));

	query = MonkSourceQuery(source, !ex.pos.started, ex.pos.npending > 0, positions);
	MonkSourceCheckNullIds(source);
	ex.inflight = MonkInFlightCreate(source);
	portal = MonkSourceOpen(query, ex.pos.last_id, ex.pos.pending, ex.pos.npending);
	ex.rows_estimated = EstimateRows(portal, max_events);
	MonkProgressBegin(ex.cursor_name, MonkSourceName(source), ex.rows_estimated);
	/* no row is sent before its commit is durable, and on the standbys named */
	MonkAwaitFlushed("monk_batch_export");
	ReportProgress(&ex, MONK_PROGRESS_SENDING);

	cxt = AllocSetContextCreate(CurrentMemoryContext, "monk_batch_export", ALLOCSET_DEFAULT_SIZES);
	/* the sender's curl handles go with cxt, on an error too */
	ex.sender = MonkSenderCreate(&export_ops, &ex, cxt);
	ExportLoop(&ex, portal, cxt);
	MonkSenderDestroy(ex.sender);
	SPI_cursor_close(portal);

	/* what the API said, clipped on a character (it is valid UTF-8: http.c) */
	(void) MonkValidUtf8(ex.auth_body, strlen(ex.auth_body), ex.auth_body, 201);
	if (ex.auth_status == -1)
		ereport(ERROR,
				(errcode(ERRCODE_CONNECTION_FAILURE),
				 errmsg("the Events API's TLS certificate was refused: %s", ex.auth_body),
				 errhint("Check monk.base_url and monk.ca_file; nothing was dead-lettered, and the next run starts from the stored cursor.")));
	if (ex.auth_status != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
				 errmsg("the Events API refused the API key (HTTP %ld)", ex.auth_status),
				 errdetail("The answer was: %s", MonkTextForDatabase(ex.auth_body)),
				 errhint("Set monk.api_key to a valid key and reload the configuration; nothing was dead-lettered, and the next run starts from the stored cursor.")));

	MonkProgressEnd();
	KeepPending(&ex);
	MonkCursorSave(ex.cursor_name, &ex.pos, ex.sent, ex.failed,
				   ex.delivery_failed ? "a batch failed after its retries" : NULL);
	SPI_finish();

	values[0] = Int32GetDatum(ex.batches);
	values[1] = Int64GetDatum(ex.sent);
	values[2] = Int64GetDatum(ex.failed);
	values[3] = Int64GetDatum(ex.pos.last_id);
	nulls[3] = !ex.pos.started;
	values[4] = DirectFunctionCall2(timestamp_mi, TimestampTzGetDatum(GetCurrentTimestamp()),
									TimestampTzGetDatum(started));
	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}
