/*
 * worker.c
 *		The background worker: one per database of monk.databases, draining its
 *		outbox to the Events API.
 *
 * The process: registration, signals, finding the log, the loop and its
 * wake-ups, reloads and shutdown; and what each answer of the sender means
 * for the log.  The log (log.c) is read in windows -- the events whose
 * transactions became visible between the end of the previous window and a
 * new snapshot of its own, a window being read in slices as there is room --
 * and decides which version of a key goes (log.h states its rules).  Events read wait in memory
 * until monk.batch_size of them can go, or the oldest has waited
 * monk.flush_interval; then they are handed to the sender as one chunk.
 * Every outcome is recorded in a short transaction of its own: nothing is
 * held open while requests are on the network.  Backends set the worker's
 * latch when transactions that queued events commit.
 */
#include "postgres.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

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
#include "log.h"
#include "outbox.h"
#include "sender.h"
#include "settings.h"
#include "shmem.h"
#include "store.h"
#include "worker.h"
#include "xact.h"

/*
 * Chunks read ahead of the requests: one more than can be in flight, so that
 * a batch is ready the moment a request slot frees.
 */
#define MONK_CHUNKS_AHEAD (monk_max_parallel_requests + 1)

/*
 * The memory the chunks ahead may hold, their bodies and the events' own
 * records together (with keys of 1,000 bytes, a chunk of 4 MB holds 12 MB):
 * past it, no chunk is filled before one is done with.  The one chunk always
 * goes.
 */
#define MONK_CHUNKS_BYTES (6 * (int64) MonkMaxRequestBytes())

/* How often the worker counts the queued events again (monk.status, the limit). */
#define RECOUNT_MS 10000

/* The state of one worker. */
typedef struct MonkWorker
{
	MonkWorkerSlot *slot;
	MonkSender *sender;
	MonkLog    *log;
	MemoryContext cxt;			/* the log's items, chunks */
	bool		ready;			/* the log's state is loaded */
	bool		need_read;
	dlist_head	chunks;			/* submitted, not yet settled */
	int			nchunks;
	int64		chunks_bytes;	/* the memory they hold */
	bool		dead_letters;	/* monk.dead_letter holds outbox events */
	TimestampTz counted_at;		/* when the queued events were last counted */
	bool		unlisted;		/* its database left monk.databases: stop */
} MonkWorker;

/* What monk.status shows the worker doing. */
static void
MonkWorkerSetState(MonkWorker *w, MonkWorkerState state)
{
	w->slot->state = state;
}

/* How many events make a batch (monk.batch_size may change on reload). */
static int
MonkBatchTarget(void)
{
	return monk_batch_size;
}

static volatile sig_atomic_t shutdown_requested = false;

static void
MonkSigterm(SIGNAL_ARGS)
{
	int			save_errno = errno;

	shutdown_requested = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

/* Forget this worker in shared memory when it exits. */
static void
WorkerExit(int code, Datum arg)
{
	MonkWorkerSlot *slot = (MonkWorkerSlot *) DatumGetPointer(arg);

	slot->latch = NULL;
	slot->pid = 0;
	slot->depth_known = false;
	slot->state = MONK_STATE_STOPPED;
}

/* ------------------------------------------------------------------------
 * The sender's reports: what an answer means for the log
 * ------------------------------------------------------------------------
 */

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

/* The items of a batch. */
static MonkQueued *
BatchItem(MonkBatch *batch, int i)
{
	return (MonkQueued *) batch->chunk->items[batch->start + i];
}

/*
 * While the dead letters hold outbox events: those of older versions of the
 * keys just accepted are superseded (never to be queued again).
 */
static void
SupersedeDeadLetters(MonkBatch *batch)
{
	const char **keys = palloc(sizeof(char *) * batch->count);
	int		   *lens = palloc(sizeof(int) * batch->count);
	int64	   *ids = palloc(sizeof(int64) * batch->count);

	for (int i = 0; i < batch->count; i++)
	{
		MonkQueued *item = BatchItem(batch, i);

		keys[i] = item->row.key;
		lens[i] = item->row.key_len;
		ids[i] = item->row.id;
	}
	MonkXactBegin("monk: marking superseded dead letters");
	MonkDeadLetterSupersede(keys, lens, ids, batch->count);
	MonkXactCommit();
	pfree(keys);
	pfree(lens);
	pfree(ids);
}

static void
OnAccepted(void *arg, MonkBatch *batch)
{
	MonkWorker *w = arg;
	MonkQueued **items = palloc(sizeof(MonkQueued *) * batch->count);

	for (int i = 0; i < batch->count; i++)
		items[i] = BatchItem(batch, i);
	MonkLogNoteAccepted(w->log, items, batch->count, batch->req.status, batch->attempts + 1);
	if (w->dead_letters)
		SupersedeDeadLetters(batch);
	for (int i = 0; i < batch->count; i++)
		MonkLogSettle(w->log, items[i]);
	MonkLogAdvance(w->log);
	pfree(items);
}

/* The dead letter of an outbox event (the caller says why). */
static MonkDeadLetter
OutboxDeadLetter(MonkQueued *item)
{
	MonkDeadLetter dl = {
		.source = "outbox",
		.source_id = item->row.id,
		.key = item->row.key,
		.key_len = item->row.key_len,
		.event = item->row.event,
		.event_len = item->row.event_len,
		.event_utf8 = true,
		.queued_at = item->row.queued_at,
	};

	return dl;
}

static void
OnRefused(void *arg, MonkBatch *batch, long status, const char *body)
{
	MonkWorker *w = arg;
	MonkQueued *item = BatchItem(batch, 0);
	MonkDeadLetter dl = OutboxDeadLetter(item);

	dl.has_status = true;
	dl.status = status;
	dl.error = psprintf("refused by the Events API (HTTP %ld)", status);
	dl.response = body;
	dl.attempts = batch->attempts + 1;

	MonkXactBegin("monk: dead-lettering a refused event");
	MonkDeadLetterInsert(&dl);
	w->dead_letters = true;
	MonkOutboxNotify(AlertPayload(w, "dead_letter", 1, status));
	MonkXactCommit();
	ereport(LOG,
			(errmsg("monk: the Events API refused event " INT64_FORMAT " (HTTP %ld); it was moved to monk.dead_letter",
					item->row.id, status)));
	MonkLogSettle(w->log, item);
	MonkLogAdvance(w->log);
}

static bool
OnParked(void *arg, MonkBatch *batch, long status, const char *error)
{
	TimestampTz next = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), monk_retry_max_delay);
	int64	   *ids = palloc(sizeof(int64) * batch->count);

	for (int i = 0; i < batch->count; i++)
	{
		BatchItem(batch, i)->parked = true;
		ids[i] = BatchItem(batch, i)->row.id;
	}
	MonkXactBegin("monk: parking a failing batch");
	MonkOutboxPark(ids, batch->count, batch->attempts, status, error, next);
	MonkXactCommit();
	pfree(ids);
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

	if (status == 0)
	{
		MonkWorkerSetState(w, MONK_STATE_PAUSED_TLS);
		ereport(WARNING,
				(errmsg("monk: the Events API's TLS certificate was refused; sending is paused"),
				 errdetail("%s", body && body[0] ? body : "The certificate could not be verified."),
				 errhint("Check monk.base_url and monk.ca_file and reload the configuration; no event is lost meanwhile.")));
	}
	else
	{
		MonkWorkerSetState(w, MONK_STATE_PAUSED_AUTH);
		ereport(WARNING,
				(errmsg("monk: the Events API refused the API key (HTTP %ld); sending is paused", status),
				 errhint("Set monk.api_key to a valid key and reload the configuration; no event is lost meanwhile.")));
	}
	MonkXactBegin("monk: reporting an authentication failure");
	MonkOutboxNotify(AlertPayload(w, status == 0 ? "tls_failed" : "auth_failed", batch->count, status));
	MonkXactCommit();
}

/*
 * An answer that is not the API's acceptance nor a documented refusal (a 200
 * page of another server at monk.base_url, a redirect): the batch is retried,
 * nothing settles; said in the log and on monk_alert.
 */
static void
OnUnexpected(void *arg, MonkBatch *batch, long status)
{
	MonkWorker *w = arg;

	ereport(WARNING,
			(errmsg("monk: unexpected answer HTTP %ld to a batch of %d events; nothing was taken as delivered, the batch is retried",
					status, batch->count),
			 errdetail("The Events API accepts a batch with HTTP 202; see monk.status.last_error for the answer."),
			 errhint("Check monk.base_url.")));
	MonkXactBegin("monk: reporting an unexpected answer");
	MonkOutboxNotify(AlertPayload(w, "unexpected_answer", batch->count, status));
	MonkXactCommit();
}

/* The memory a chunk holds: its body and its events' records. */
static int64
ChunkBytes(MonkChunk *chunk)
{
	return (int64) chunk->data.maxlen + chunk->items_bytes;
}

static void
OnChunkDone(void *arg, MonkChunk *chunk)
{
	MonkWorker *w = arg;

	dlist_delete(&chunk->node);
	w->nchunks--;
	w->chunks_bytes -= ChunkBytes(chunk);
	MonkChunkFree(chunk);
	w->need_read = true;
}

/* The sender's reports, into the worker's slot for monk.status. */
static void
OnCount(void *arg, MonkCounter counter, int64 n)
{
	MonkWorker *w = (MonkWorker *) arg;

	pg_atomic_fetch_add_u64(&w->slot->counters[counter], n);
}

static void
OnOutcome(void *arg, const char *error)
{
	MonkWorker *w = (MonkWorker *) arg;

	if (error)
		MonkSlotSetError(w->slot, error);
	else
		MonkSlotSetSuccess(w->slot);
}

static void
OnCircuit(void *arg, MonkCircuitState state)
{
	MonkWorker *w = (MonkWorker *) arg;

	w->slot->circuit = state;
}

static const MonkSenderOps WorkerOps = {
	.accepted = OnAccepted,
	.refused = OnRefused,
	.parked = OnParked,
	.auth_failed = OnAuthFailed,
	.unexpected = OnUnexpected,
	.chunk_done = OnChunkDone,
	.count = OnCount,
	.outcome = OnOutcome,
	.circuit = OnCircuit,
};


/* The chunk being filled, and the events that cannot be sent. */
typedef struct Filling
{
	MonkChunk  *chunk;
	List	   *unsendable;
} Filling;

/*
 * Add one event to the chunk being filled (MonkLogTake's callback), unless
 * the body would pass monk.max_request_size; an event larger than
 * monk.max_event_size (queued under a higher limit), or not convertible to
 * UTF-8, is put aside.
 */
static bool
TakeItem(void *arg, MonkQueued *item)
{
	Filling    *f = arg;

	if (item->row.event_len > MonkMaxEventBytes() || item->not_utf8)
	{
		f->unsendable = lappend(f->unsendable, item);
		return true;
	}
	if (f->chunk->n > 0 &&
		(int64) f->chunk->data.len + item->row.event_len + 32 > MonkMaxRequestBytes())
		return false;
	MonkChunkAdd(f->chunk, item->row.id, item->row.event, item->row.event_len, item->row.queued_at);
	MonkChunkSetItem(f->chunk, item);
	f->chunk->items_bytes += sizeof(MonkQueued) + item->row.key_len + item->row.event_len;
	return true;
}

/*
 * An event that cannot be sent as it is -- larger than monk.max_event_size
 * now than when it was queued, or not convertible to UTF-8 -- goes to the
 * dead letters with the reason: it never stops the events behind it.
 */
static void
DeadLetterUnsendable(MonkWorker *w, MonkQueued *item)
{
	MonkEventError err;
	MonkDeadLetter dl = OutboxDeadLetter(item);

	if (item->not_utf8)
	{
		/* kept as stored: in the database's encoding */
		dl.event_utf8 = false;
		dl.error = pstrdup("the event cannot be converted to UTF-8 (a character has no equivalent in UTF-8)");
	}
	else
	{
		(void) MonkEventFits(item->row.event_len, &err);
		dl.error = psprintf("%s (%s)", err.message, err.detail);
	}
	MonkXactBegin("monk: dead-lettering an event that cannot be sent");
	MonkDeadLetterInsert(&dl);
	MonkOutboxNotify(AlertPayload(w, "dead_letter", 1, 0));
	MonkXactCommit();
	w->dead_letters = true;
	ereport(LOG,
			(errmsg("monk: event " INT64_FORMAT " cannot be sent (%s); it was moved to monk.dead_letter",
					item->row.id, dl.error)));
	pg_atomic_fetch_add_u64(&w->slot->counters[MONK_EVENTS_FAILED], 1);
	MonkLogSettle(w->log, item);
}

/*
 * Hand the pending events that may go (one version per key) to the sender,
 * as many as monk.batch_size and monk.max_request_size allow.
 */
static void
Submit(MonkWorker *w)
{
	int			target = MonkBatchTarget();
	Filling		f = {MonkChunkCreate(w->cxt, target), NIL};
	ListCell   *lc;

	(void) MonkLogTake(w->log, target, TakeItem, &f);
	foreach(lc, f.unsendable)
		DeadLetterUnsendable(w, (MonkQueued *) lfirst(lc));
	if (f.unsendable != NIL)
		MonkLogAdvance(w->log);
	if (f.chunk->n == 0)
	{
		MonkChunkFree(f.chunk);
		return;
	}
	dlist_push_tail(&w->chunks, &f.chunk->node);
	w->nchunks++;
	w->chunks_bytes += ChunkBytes(f.chunk);
	MonkSenderSubmit(w->sender, f.chunk);
}

/*
 * Is counting the queued events again worth it?  Up to a million (a count
 * takes a fraction of a second), or near monk.max_outbox_events, where a
 * drift would refuse or admit events wrongly; a larger backlog's figure in
 * monk.status may drift meanwhile, by what rolled back or was discarded.
 */
static bool
WorthRecounting(MonkWorker *w)
{
	int64		depth = MonkSlotDepth(w->slot);

	return depth <= 1000000 ||
		(monk_max_outbox_events > 0 && depth <= 2 * (int64) monk_max_outbox_events);
}

/*
 * In each upkeep of the segments (in its transaction): do outbox events wait
 * in the dead letters?  And every RECOUNT_MS, count the queued events again,
 * so that the depth behind monk.status and monk.max_outbox_events follows
 * what is really queued whatever moved it without the worker's knowledge
 * (events discarded with DELETE FROM monk.outbox, prepared transactions
 * committed or rolled back, restores).
 */
static void
OnMaintain(void *arg)
{
	MonkWorker *w = arg;
	TimestampTz now = GetCurrentTimestamp();

	w->dead_letters = MonkDeadLettersOfOutbox();
	if (TimestampDifferenceExceeds(w->counted_at, now, RECOUNT_MS) && WorthRecounting(w))
	{
		int64		unsettled = MonkLogCountUnsettled(w->log);

		/*
		 * commits and settlements after this transaction's snapshot count on
		 * top
		 */
		w->slot->depth_base = unsettled - (int64) pg_atomic_read_u64(&w->slot->committed) +
			(int64) pg_atomic_read_u64(&w->slot->settled);
		w->counted_at = now;
	}
}

/* ------------------------------------------------------------------------
 * Start, the loop, shutdown
 * ------------------------------------------------------------------------
 */

/*
 * Find this database's outbox and load the log's state.  Returns false
 * while there is none (no CREATE EXTENSION monk) or it is 0.1's (ALTER
 * EXTENSION monk UPDATE pending): the caller sleeps.
 */
static bool
PrepareLog(MonkWorker *w)
{
	static bool legacy_logged = false;
	MonkOutboxSchema schema;
	uint64		committed;
	int64		unsettled;

	MonkXactBegin("monk: looking for the outbox");
	schema = MonkOutboxFindSchema();
	if (schema != MONK_OUTBOX_LOG)
	{
		MonkXactCommit();
		if (schema == MONK_OUTBOX_LEGACY && !legacy_logged)
		{
			ereport(LOG,
					(errmsg("monk: the outbox of database \"%s\" is monk 0.1's; nothing is sent until ALTER EXTENSION monk UPDATE",
							w->slot->dbname),
					 errhint("Run ALTER EXTENSION monk UPDATE in database \"%s\"; the events queued meanwhile are kept.",
							 w->slot->dbname)));
			legacy_logged = true;
		}
		return false;
	}
	pg_atomic_write_u64(&w->slot->settled, 0);
	committed = pg_atomic_read_u64(&w->slot->committed);
	unsettled = MonkLogLoad(w->log);
	w->dead_letters = MonkDeadLettersOfOutbox();
	MonkXactCommit();

	MonkLogResume(w->log);
	w->slot->depth_base = unsettled - (int64) committed;
	w->counted_at = GetCurrentTimestamp();
	pg_write_barrier();
	w->slot->depth_known = true;
	w->ready = true;
	w->need_read = true;
	return true;
}

/*
 * Reload the configuration: it ends an authentication pause; a new URL, key
 * or CA also closes the circuit and ends every backoff and Retry-After (a
 * reload that changes none of them leaves those as they were).
 */
static void
Reload(MonkWorker *w)
{
	bool		was_paused = MonkSenderPaused(w->sender);
	uint64		destination = MonkDestinationHash();

	ConfigReloadPending = false;
	ProcessConfigFile(PGC_SIGHUP);
	if (!MonkDatabaseListed(w->slot->dbname))
	{
		ereport(LOG,
				(errmsg("monk: database \"%s\" is no longer in monk.databases: its worker stops; its queued events stay queued",
						w->slot->dbname),
				 errhint("Add it to monk.databases again and reload to have them sent.")));
		w->unlisted = true;
		return;
	}
	MonkSenderConfigChanged(w->sender, MonkDestinationHash() != destination);
	if (was_paused)
	{
		ereport(LOG, (errmsg("monk: configuration reloaded; sending resumes")));
		MonkWorkerSetState(w, MONK_STATE_IDLE);
	}
}

/* Shutdown: start nothing new, let requests in flight finish for a while. */
static void
Drain(MonkWorker *w)
{
	TimestampTz deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), monk_shutdown_timeout);

	MonkWorkerSetState(w, MONK_STATE_STOPPING);
	MonkSenderStartDraining(w->sender);
	while (MonkSenderInflight(w->sender) > 0)
	{
		long		left = (long) ((deadline - GetCurrentTimestamp()) / 1000);

		if (left <= 0)
		{
			ereport(LOG,
					(errmsg("monk: %d requests still in flight after monk.shutdown_timeout; their events stay queued",
							MonkSenderInflight(w->sender))));
			break;
		}
		MonkSenderWait(w->sender, left, PG_WAIT_EXTENSION);
		CHECK_FOR_INTERRUPTS();
	}
	if (w->ready)
		MonkLogRecord(w->log, true);
}

/* Publish what the worker is doing for monk.status. */
static void
PublishState(MonkWorker *w)
{
	if (MonkSenderPaused(w->sender))
		MonkWorkerSetState(w, MonkSenderPausedOnTls(w->sender) ? MONK_STATE_PAUSED_TLS : MONK_STATE_PAUSED_AUTH);
	else if (MonkSenderCircuit(w->sender) == MONK_CIRCUIT_OPEN)
		MonkWorkerSetState(w, MONK_STATE_CIRCUIT_OPEN);
	else if (MonkSenderInflight(w->sender) > 0)
		MonkWorkerSetState(w, MONK_STATE_SENDING);
	else if (MonkLogGateWaitMs(w->log) >= 0)
		MonkWorkerSetState(w, MONK_STATE_WAITING_STANDBY);
	else if (MonkSenderBackingOff(w->sender) > 0)
		MonkWorkerSetState(w, MONK_STATE_BACKOFF);
	else
	{
		MonkWorkerSetState(w, MONK_STATE_IDLE);
		MonkSlotErrorOver(w->slot);
	}
}

/* Is there room for another batch in flight? */
static bool
HasRoom(MonkWorker *w)
{
	return !MonkSenderPaused(w->sender) && w->nchunks < MONK_CHUNKS_AHEAD &&
		(w->nchunks == 0 || w->chunks_bytes < MONK_CHUNKS_BYTES);
}

/*
 * Read while there is room for another batch and too few events wait for
 * one.  Returns how many wait, and in *oldest when the oldest was queued.
 */
static int
ReadIfRoom(MonkWorker *w, TimestampTz *oldest)
{
	int			sendable = MonkLogCountSendable(w->log, MonkBatchTarget(), oldest);

	/* events waiting for the standbys: look at them again when due */
	if (MonkLogGateWaitMs(w->log) == 0)
		w->need_read = true;
	if (w->need_read && HasRoom(w) && sendable < MonkBatchTarget())
	{
		int64		room = (int64) MonkMaxRequestBytes() - MonkLogPendingBytes(w->log);

		if (room > 0)
			w->need_read = MonkLogRead(w->log, MonkBatchTarget() - sendable, room);
		sendable = MonkLogCountSendable(w->log, MonkBatchTarget(), oldest);
	}
	return sendable;
}

/*
 * Flush a full batch, or one whose oldest event waited monk.flush_interval.
 * Returns the milliseconds until the waiting events are due (-1: none wait).
 */
static long
FlushIfDue(MonkWorker *w, int sendable, TimestampTz oldest)
{
	TimestampTz due;
	TimestampTz now;

	if (!HasRoom(w) || sendable == 0)
		return -1;
	due = TimestampTzPlusMilliseconds(oldest, monk_flush_interval);
	now = GetCurrentTimestamp();
	/* a batch is full by count, or by bytes (monk.max_request_size) */
	if (sendable < MonkBatchTarget() && MonkLogPendingBytes(w->log) < MonkMaxRequestBytes() && now < due)
		return (long) ((due - now + 999) / 1000);
	Submit(w);
	MonkSenderDispatch(w->sender);
	w->need_read = true;
	return -1;
}

/* The earlier of two timeouts (-1: none). */
static long
EarlierTimeout(long a, long b)
{
	if (a < 0)
		return b;
	return (b >= 0 && b < a) ? b : a;
}

/*
 * Arm the wake-up: which commits should wake us.  With room for a batch,
 * the next event (or, while some wait for their flush, enough to fill the
 * batch); without room, none -- a settled chunk makes room and wakes us.
 * Returns the timeout, 0 when there is reading to do now.
 */
static long
ArmWakeup(MonkWorker *w, int sendable, long timeout)
{
	uint64		wake_at = PG_UINT64_MAX;

	if (w->need_read && HasRoom(w))
		timeout = 0;
	else if (HasRoom(w))
		wake_at = MonkLogReadBase(w->log) + (sendable > 0 ? Max(MonkBatchTarget() - sendable, 1) : 1);
	MonkSlotWakeAt(w->slot, wake_at);
	if (wake_at != PG_UINT64_MAX && pg_atomic_read_u64(&w->slot->committed) >= wake_at)
	{
		w->need_read = true;
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
		w->need_read = true;
	}
	return timeout;
}

/*
 * Before a sleep longer than the segments' upkeep interval: save the
 * frontier, and come back for the upkeep if a segment needs it.
 */
static long
BeforeSleep(MonkWorker *w, long timeout)
{
	if (timeout >= 0 && timeout <= MONK_MAINTAIN_MS)
		return timeout;
	MonkLogRecord(w->log, true);
	pgstat_report_stat(true);
	if (MonkLogSegmentsPending(w->log))
		return MONK_MAINTAIN_MS;
	/* events believed queued: count them again now and then (OnMaintain) */
	if (MonkSlotDepth(w->slot) > 0 && (timeout < 0 || timeout > RECOUNT_MS))
		return RECOUNT_MS;
	return timeout;
}

/*
 * One pass of the loop: send what is ready, record what settled, read while
 * there is room, flush a batch when it is full or old enough, publish the
 * state, arm the wake-up.  Returns the time to wait for (-1: until woken).
 */
static long
Step(MonkWorker *w)
{
	TimestampTz oldest;
	int			sendable;
	long		timeout;

	/* requests first: what is ready goes out before the bookkeeping */
	MonkSenderDispatch(w->sender);
	MonkLogRecord(w->log, false);

	sendable = ReadIfRoom(w, &oldest);
	timeout = FlushIfDue(w, sendable, oldest);
	PublishState(w);
	timeout = EarlierTimeout(timeout, MonkSenderNextWakeMs(w->sender));
	timeout = ArmWakeup(w, sendable, timeout);

	/*
	 * events waiting for the standbys: look again (without room, a settled
	 * chunk wakes us)
	 */
	if (HasRoom(w))
		timeout = EarlierTimeout(timeout, MonkLogGateWaitMs(w->log));
	return BeforeSleep(w, timeout);
}

/* Entry point of a monk worker; arg is its slot number. */
void
MonkWorkerMain(Datum arg)
{
	int			slotno = DatumGetInt32(arg);
	MonkWorker	w;
	MemoryContext loopcxt;
	char		dbname[NAMEDATALEN];
	bool		listed;
	TimestampTz started;

	memset(&w, 0, sizeof(w));
	w.slot = &MonkShmem->slots[slotno];
#ifdef __GLIBC__

	/*
	 * Request bodies and batches of events are blocks of megabytes, freed as
	 * batches settle.  glibc raises its mmap threshold each time such a block
	 * is freed, after which they come from the heap and stay resident: a
	 * fixed threshold gives them back at once, so that the worker's memory
	 * follows what it holds (README, Bounded resources).
	 */
	mallopt(M_MMAP_THRESHOLD, 256 * 1024);
#endif

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, MonkSigterm);
	BackgroundWorkerUnblockSignals();

	/*
	 * The slot is this worker's, unless another runs for it, or its database
	 * left monk.databases since the launcher started it (launcher.c).
	 */
	SpinLockAcquire(&w.slot->mutex);
	strlcpy(dbname, w.slot->dbname, NAMEDATALEN);
	SpinLockRelease(&w.slot->mutex);
	listed = dbname[0] != '\0' && MonkDatabaseListed(dbname);
	started = GetCurrentTimestamp();
	SpinLockAcquire(&w.slot->mutex);
	if (w.slot->pid != 0 || strcmp(w.slot->dbname, dbname) != 0 || dbname[0] == '\0')
	{
		SpinLockRelease(&w.slot->mutex);
		proc_exit(0);
	}
	if (!listed)
	{
		w.slot->dbname[0] = '\0';
		w.slot->dboid = InvalidOid;
		SpinLockRelease(&w.slot->mutex);
		proc_exit(0);
	}
	w.slot->pid = MyProcPid;
	w.slot->started_at = started;
	SpinLockRelease(&w.slot->mutex);
	before_shmem_exit(WorkerExit, PointerGetDatum(w.slot));

	BackgroundWorkerInitializeConnection(dbname, NULL, 0);
	/* the database's search_path never chooses what the worker runs */
	MonkSafeSearchPathPin();
	pgstat_report_appname(psprintf("monk worker: %s", dbname));

	w.slot->dboid = MyDatabaseId;
	w.slot->state = MONK_STATE_STARTING;
	w.slot->latch = MyLatch;

	w.cxt = AllocSetContextCreate(TopMemoryContext, "monk worker", ALLOCSET_DEFAULT_SIZES);
	dlist_init(&w.chunks);
	w.log = MonkLogCreate(w.cxt, w.slot, OnMaintain, &w);
	w.sender = MonkSenderCreate(&WorkerOps, &w, w.cxt);

	ereport(LOG, (errmsg("monk worker started for database \"%s\"", dbname)));

	loopcxt = AllocSetContextCreate(TopMemoryContext, "monk worker loop", ALLOCSET_DEFAULT_SIZES);
	while (!shutdown_requested && !w.unlisted)
	{
		long		timeout;

		/* what one pass allocates lives until the next pass */
		MemoryContextSwitchTo(loopcxt);
		MemoryContextReset(loopcxt);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
			Reload(&w);

		/* without the log there is nothing to read: sleep until woken */
		if (!w.ready && !PrepareLog(&w))
		{
			MonkWorkerSetState(&w, MONK_STATE_IDLE);
			MonkSlotWakeAt(w.slot, 0);
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 10000,
							 PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			continue;
		}

		timeout = Step(&w);
		if (MonkSenderWait(w.sender, timeout, PG_WAIT_EXTENSION))
			w.need_read = true;
	}

	Drain(&w);
	if (w.unlisted)
		MonkSlotRelease(w.slot);
	proc_exit(w.unlisted ? 0 : 1);
}
