/*
 * worker.c
 *		The background worker: one per database of monk.databases, draining its
 *		outbox to the Events API.
 *
 * The loop: read queued events into a chunk (short transaction), hand the
 * chunk to the sender once monk.batch_size events wait or the oldest has
 * waited monk.flush_interval, wait on the latch and the network together,
 * and record each outcome in a new short transaction: accepted events are
 * deleted, refused ones moved to the dead letters.  Nothing is held open
 * while requests are on the network.  The worker sleeps on its latch when
 * there is nothing to do; backends set it when a transaction that queued
 * events commits.
 *
 * Events being sent stay in the outbox until the API accepted them, so a
 * crash at any point resends them, with the same idempotency keys.  The
 * worker knows which outbox rows it holds in memory by the id ranges of its
 * chunks, and reads only outside them, so that an event committed late
 * with a smaller id than rows already read is still found.
 */
#include "postgres.h"

#include "access/twophase.h"
#include "access/xact.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "event.h"
#include "outbox.h"
#include "sender.h"
#include "settings.h"
#include "shmem.h"
#include "worker.h"

/* The state of one worker. */
typedef struct MonkWorker
{
	MonkWorkerSlot *slot;
	MonkSender *sender;
	MemoryContext cxt;			/* chunks live under it */
	dlist_head	chunks;			/* submitted, not yet settled */
	int			nchunks;
	dlist_head	settled;		/* settled, their accepted events not yet deleted */
	int64	   *accepted;		/* ids accepted by the API, to delete */
	ItemPointerData *accepted_tids; /* and their rows, while known */
	int			naccepted;
	int			accepted_cap;
	int64	   *moved;			/* accepted, their rows updated since read: by id */
	int			nmoved;
	int			moved_cap;
	MonkChunk  *open;			/* being filled */
	bool		need_read;
	uint64		read_base;		/* committed count before the last read */
} MonkWorker;

/*
 * Chunks read ahead of the requests: one more than can be in flight, so that
 * a batch is ready the moment a request slot frees.
 */
#define CHUNKS_AHEAD (monk_max_parallel_requests + 1)

static volatile sig_atomic_t shutdown_requested = false;

static void
MonkSigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	shutdown_requested = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

/* Register one worker per database of monk.databases (from _PG_init). */
void
MonkWorkersRegister(void)
{
	List	   *names = MonkDatabaseList();
	ListCell   *lc;
	int			i = 0;

	foreach(lc, names)
	{
		BackgroundWorker worker;

		memset(&worker, 0, sizeof(worker));
		worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
		/* a standby does not export; after promotion the worker starts */
		worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
		worker.bgw_restart_time = 5;
		strlcpy(worker.bgw_library_name, "monk", BGW_MAXLEN);
		strlcpy(worker.bgw_function_name, "MonkWorkerMain", BGW_MAXLEN);
		snprintf(worker.bgw_name, BGW_MAXLEN, "monk worker for database %s", (char *) lfirst(lc));
		strlcpy(worker.bgw_type, "monk worker", BGW_MAXLEN);
		worker.bgw_main_arg = Int32GetDatum(i);
		worker.bgw_notify_pid = 0;
		RegisterBackgroundWorker(&worker);
		i++;
	}
}

static void
SetState(MonkWorker *w, MonkWorkerState state)
{
	w->slot->state = state;
}

/* Forget this worker in shared memory when it exits. */
static void
WorkerExit(int code, Datum arg)
{
	MonkWorkerSlot *slot = (MonkWorkerSlot *) DatumGetPointer(arg);

	slot->latch = NULL;
	slot->pid = 0;
	slot->state = MONK_STATE_STOPPED;
}

/* The ids of a batch, for the SQL statements. */
static int64 *
BatchIds(MonkBatch *batch)
{
	return batch->chunk->ids + batch->start;
}

/* The JSON payload of a NOTIFY monk_alert. */
static char *
AlertPayload(MonkWorker *w, const char *what, int count, long status)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"event\": \"%s\", \"database\": ", what);
	MonkEscapeJson(&buf, w->slot->dbname, strlen(w->slot->dbname));
	appendStringInfo(&buf, ", \"count\": %d, \"status\": %ld}", count, status);
	return buf.data;
}

/*
 * Accepted events are deleted together, after the next requests went out
 * (DeleteAccepted); until then their chunk stays held, so no read sees them.
 */
/* Room for "need" elements of "size" bytes in an array of capacity *cap. */
static void *
Grow(MemoryContext cxt, void *array, Size size, int *cap, int need)
{
	if (need <= *cap)
		return array;
	*cap = Max(*cap * 2, need);
	return array ? repalloc(array, size * *cap) : MemoryContextAlloc(cxt, size * *cap);
}

static void
OnAccepted(void *arg, MonkBatch *batch)
{
	MonkWorker *w = arg;
	MonkChunk  *chunk = batch->chunk;
	int			need;

	if (chunk->tids == NULL || chunk->tids_stale)
	{
		w->moved = Grow(w->cxt, w->moved, sizeof(int64), &w->moved_cap, w->nmoved + batch->count);
		memcpy(w->moved + w->nmoved, BatchIds(batch), sizeof(int64) * batch->count);
		w->nmoved += batch->count;
		return;
	}
	need = w->naccepted + batch->count;
	if (need > w->accepted_cap)
	{
		int			cap = w->accepted_cap;

		w->accepted_tids = Grow(w->cxt, w->accepted_tids, sizeof(ItemPointerData), &cap, need);
		w->accepted = Grow(w->cxt, w->accepted, sizeof(int64), &w->accepted_cap, need);
	}
	memcpy(w->accepted + w->naccepted, BatchIds(batch), sizeof(int64) * batch->count);
	memcpy(w->accepted_tids + w->naccepted, chunk->tids + batch->start,
		   sizeof(ItemPointerData) * batch->count);
	w->naccepted += batch->count;
}

/* Delete the accepted events in one transaction, then release their chunks. */
static void
DeleteAccepted(MonkWorker *w)
{
	dlist_mutable_iter iter;

	if (w->naccepted > 0 || w->nmoved > 0)
	{
		OutboxBegin("monk: deleting delivered events");
		if (w->naccepted > 0)
			OutboxDeleteByTid(w->accepted_tids, w->accepted, w->naccepted);
		if (w->nmoved > 0)
			OutboxDelete(w->moved, w->nmoved);
		OutboxCommit();
		w->naccepted = 0;
		w->nmoved = 0;
	}
	dlist_foreach_modify(iter, &w->settled)
	{
		MonkChunk  *chunk = dlist_container(MonkChunk, node, iter.cur);

		dlist_delete(&chunk->node);
		MonkChunkFree(chunk);
		w->need_read = true;
	}
}

static void
OnRefused(void *arg, MonkBatch *batch, long status, const char *body)
{
	MonkWorker *w = arg;
	char	   *error = psprintf("refused by the Events API (HTTP %ld)", status);

	OutboxBegin("monk: dead-lettering a refused event");
	OutboxDeadLetter(BatchIds(batch)[0], status, error, body, batch->attempts);
	OutboxNotify(AlertPayload(w, "dead_letter", 1, status));
	OutboxCommit();
	ereport(LOG,
			(errmsg("monk: the Events API refused event " INT64_FORMAT " (HTTP %ld); it was moved to monk.dead_letter",
					BatchIds(batch)[0], status)));
}

static bool
OnParked(void *arg, MonkBatch *batch, long status, const char *error)
{
	TimestampTz next = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), monk_retry_max_delay);

	OutboxBegin("monk: parking a failing batch");
	OutboxPark(BatchIds(batch), batch->count, batch->attempts, status, error, next);
	OutboxCommit();
	/* the update moved the rows: delete them by id from now on */
	batch->chunk->tids_stale = true;
	ereport(WARNING,
			(errmsg("monk: a batch of %d events failed %d times; it stays queued and is retried in %d ms",
					batch->count, batch->attempts, monk_retry_max_delay),
			 errdetail("Last error: %s", error)));
	return true;
}

static void
OnAuthFailed(void *arg, MonkBatch *batch, long status, const char *body)
{
	MonkWorker *w = arg;

	SetState(w, MONK_STATE_PAUSED_AUTH);
	ereport(WARNING,
			(errmsg("monk: the Events API refused the API key (HTTP %ld); sending is paused", status),
			 errhint("Set monk.api_key to a valid key and reload the configuration; no event is lost meanwhile.")));
	OutboxBegin("monk: reporting an authentication failure");
	OutboxNotify(AlertPayload(w, "auth_failed", batch->count, status));
	OutboxCommit();
}

static void
OnChunkDone(void *arg, MonkChunk *chunk)
{
	MonkWorker *w = arg;

	dlist_delete(&chunk->node);
	w->nchunks--;
	dlist_push_tail(&w->settled, &chunk->node);
}

static const MonkSenderOps worker_ops = {
	OnAccepted, OnRefused, OnParked, OnAuthFailed, OnChunkDone
};

static void
AddRow(void *arg, int64 id, ItemPointer tid, const char *event, int len, TimestampTz queued_at)
{
	MonkWorker *w = arg;

	MonkChunkAdd(w->open, id, event, len, queued_at);
	MonkChunkSetTid(w->open, tid);
}

/* How many events make the chunk full: monk.batch_size may have changed. */
static int
ChunkTarget(MonkChunk *chunk)
{
	return Min(chunk->cap, monk_batch_size);
}

static int
CompareRange(const void *a, const void *b)
{
	int64		x = ((const int64 *) a)[0];
	int64		y = ((const int64 *) b)[0];

	return (x > y) - (x < y);
}

/* Append the id range of each chunk of the list; returns the new count. */
static int
AddRanges(dlist_head *list, int64 *ranges, int nranges)
{
	dlist_iter	iter;

	dlist_foreach(iter, list)
	{
		MonkChunk  *c = dlist_container(MonkChunk, node, iter.cur);

		ranges[2 * nranges] = c->min_id;
		ranges[2 * nranges + 1] = c->max_id;
		nranges++;
	}
	return nranges;
}

/*
 * Read queued events into the open chunk, outside the id ranges of the
 * chunks in memory.  Returns true when the chunk was filled up (more may
 * be waiting).
 */
static bool
ReadEvents(MonkWorker *w)
{
	int64	   *ranges;
	int			nranges = 0;
	int64		after = 0;
	dlist_iter	iter;
	int			want;
	int			nheld = w->nchunks + 1;

	if (w->open == NULL)
		w->open = MonkChunkCreate(w->cxt, monk_batch_size);
	want = ChunkTarget(w->open) - w->open->n;

	dlist_foreach(iter, &w->settled)
		nheld++;
	ranges = palloc(sizeof(int64) * 2 * nheld);
	nranges = AddRanges(&w->chunks, ranges, nranges);
	nranges = AddRanges(&w->settled, ranges, nranges);
	if (w->open->n > 0)
	{
		ranges[2 * nranges] = w->open->min_id;
		ranges[2 * nranges + 1] = w->open->max_id;
		nranges++;
	}
	qsort(ranges, nranges, sizeof(int64) * 2, CompareRange);

	w->read_base = pg_atomic_read_u64(&w->slot->committed);
	OutboxBegin("monk: reading queued events");
	for (int i = 0; i <= nranges && want > 0; i++)
	{
		int64		before = (i < nranges) ? ranges[2 * i] : PG_INT64_MAX;

		if (before > after + 1)
			want -= OutboxRead(after, before, want, AddRow, w);
		if (i < nranges)
			after = Max(after, ranges[2 * i + 1]);
	}
	OutboxCommit();
	pfree(ranges);
	return want == 0;
}

/* Hand the open chunk to the sender. */
static void
SubmitOpen(MonkWorker *w)
{
	dlist_push_tail(&w->chunks, &w->open->node);
	w->nchunks++;
	MonkSenderSubmit(w->sender, w->open);
	w->open = NULL;
}

/* Reload the configuration; a new key ends an authentication pause. */
static void
Reload(MonkWorker *w)
{
	bool		was_paused = w->sender->paused;

	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);
	MonkSenderConfigChanged(w->sender);
	if (was_paused)
	{
		ereport(LOG, (errmsg("monk: configuration reloaded; sending resumes")));
		SetState(w, MONK_STATE_IDLE);
	}
}

/* Shutdown: start nothing new, let requests in flight finish for a while. */
static void
Drain(MonkWorker *w)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), monk_shutdown_timeout);

	SetState(w, MONK_STATE_STOPPING);
	w->sender->draining = true;
	while (w->sender->inflight > 0)
	{
		long		left = (long) ((deadline - GetCurrentTimestamp()) / 1000);

		if (left <= 0)
		{
			ereport(LOG,
					(errmsg("monk: %d requests still in flight after monk.shutdown_timeout; their events stay queued",
							w->sender->inflight)));
			break;
		}
		MonkSenderWait(w->sender, left, PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
	}
	DeleteAccepted(w);
}

/* Entry point of a monk worker; arg is its slot number. */
void
MonkWorkerMain(Datum arg)
{
	int			slotno = DatumGetInt32(arg);
	MonkWorker	w;
	MemoryContext loopcxt;

	memset(&w, 0, sizeof(w));
	w.slot = &MonkShmem->slots[slotno];

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, MonkSigterm);
	BackgroundWorkerUnblockSignals();

	BackgroundWorkerInitializeConnection(w.slot->dbname, NULL, 0);
	pgstat_report_appname(psprintf("monk worker: %s", w.slot->dbname));

	w.slot->dboid = MyDatabaseId;
	w.slot->state = MONK_STATE_STARTING;
	SpinLockAcquire(&w.slot->mutex);
	w.slot->started_at = GetCurrentTimestamp();
	SpinLockRelease(&w.slot->mutex);
	w.slot->pid = MyProcPid;
	w.slot->latch = MyLatch;
	before_shmem_exit(WorkerExit, PointerGetDatum(w.slot));

	w.cxt = AllocSetContextCreate(TopMemoryContext, "monk worker", ALLOCSET_DEFAULT_SIZES);
	dlist_init(&w.chunks);
	dlist_init(&w.settled);
	w.sender = MonkSenderCreate(&worker_ops, &w, w.slot);
	w.need_read = true;

	ereport(LOG, (errmsg("monk worker started for database \"%s\"", w.slot->dbname)));

	loopcxt = AllocSetContextCreate(TopMemoryContext, "monk worker loop", ALLOCSET_DEFAULT_SIZES);
	while (!shutdown_requested)
	{
		long		timeout = -1;
		long		sender_wake;
		bool		room;
		uint64		wake_at = PG_UINT64_MAX;

		/* what one pass allocates lives until the next pass */
		MemoryContextSwitchTo(loopcxt);
		MemoryContextReset(loopcxt);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
			Reload(&w);

		/* without the extension there is nothing to read: sleep until woken */
		if (w.need_read && w.nchunks == 0 && w.open == NULL && dlist_is_empty(&w.settled))
		{
			bool		exists;

			OutboxBegin("monk: looking for the outbox");
			exists = OutboxExists();
			OutboxCommit();
			if (!exists)
			{
				SetState(&w, MONK_STATE_IDLE);
				MonkSlotWakeAt(w.slot, 0);
				(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1, PG_WAIT_EXTENSION);
				ResetLatch(MyLatch);
				continue;
			}
		}

		/* requests first: what is ready goes out before the bookkeeping */
		MonkSenderDispatch(w.sender);
		DeleteAccepted(&w);

		/* read while there is room for another chunk */
		room = !w.sender->paused && w.nchunks < CHUNKS_AHEAD;
		if (w.need_read && room)
			w.need_read = ReadEvents(&w);

		/* flush a full chunk, or one whose oldest event waited long enough */
		if (w.open && w.open->n > 0)
		{
			TimestampTz due = TimestampTzPlusMilliseconds(w.open->oldest, monk_flush_interval);
			TimestampTz now = GetCurrentTimestamp();

			if (w.open->n >= ChunkTarget(w.open) || now >= due)
			{
				SubmitOpen(&w);
				MonkSenderDispatch(w.sender);
				w.need_read = true;
			}
			else
				timeout = (long) ((due - now + 999) / 1000);
		}

		if (w.sender->paused)
			SetState(&w, MONK_STATE_PAUSED_AUTH);
		else if (w.sender->circuit.state == MONK_CIRCUIT_OPEN)
			SetState(&w, MONK_STATE_CIRCUIT_OPEN);
		else if (w.sender->inflight > 0)
			SetState(&w, MONK_STATE_SENDING);
		else if (w.sender->nwaiting > 0)
			SetState(&w, MONK_STATE_BACKOFF);
		else
			SetState(&w, MONK_STATE_IDLE);

		sender_wake = MonkSenderNextWakeMs(w.sender);
		if (sender_wake >= 0 && (timeout < 0 || sender_wake < timeout))
			timeout = sender_wake;

		/*
		 * Which commits should wake us: with room for a chunk, the next event
		 * (or, while a partial chunk waits for its flush, enough to fill it);
		 * without room, none -- a settled chunk makes room and wakes us.
		 */
		room = !w.sender->paused && w.nchunks < CHUNKS_AHEAD;
		if (w.need_read && room)
			timeout = 0;
		else if (room)
		{
			int			missing = (w.open && w.open->n > 0) ? ChunkTarget(w.open) - w.open->n : 1;

			wake_at = w.read_base + Max(missing, 1);
		}
		MonkSlotWakeAt(w.slot, wake_at);
		if (wake_at != PG_UINT64_MAX && pg_atomic_read_u64(&w.slot->committed) >= wake_at)
		{
			w.need_read = true;
			timeout = 0;
		}

		/*
		 * COMMIT PREPARED wakes nobody (the session that queued the events
		 * prepared them): where prepared transactions are enabled, look again
		 * every 10 s when idle.
		 */
		if (timeout < 0 && max_prepared_xacts > 0)
		{
			timeout = 10000;
			w.need_read = true;
		}

		/* going to sleep for good: let autovacuum and the statistics see our deletes */
		if (timeout < 0 || timeout > 1000)
			pgstat_report_stat(true);

		if (MonkSenderWait(w.sender, timeout, PG_WAIT_EXTENSION))
			w.need_read = true;
	}

	Drain(&w);
	proc_exit(1);
}
