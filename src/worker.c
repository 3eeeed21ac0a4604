/*
 * worker.c
 *		The background worker: one per database of monk.databases, draining its
 *		outbox to the Events API.
 *
 * The outbox is a log (outbox.c).  The worker reads it in windows: the
 * events whose transactions became visible between the end of the previous
 * window and a new snapshot of its own, in commit order, a window being read
 * in slices as there is room.  Events read wait in memory (pending) until
 * monk.batch_size of them can go, or the oldest has waited
 * monk.flush_interval; then they are handed to the sender as one chunk.
 * Every outcome is recorded in a short transaction of its own: nothing is
 * held open while requests are on the network.  Backends set the worker's
 * latch when transactions that queued events commit.
 *
 * Per-key order: the versions of one idempotency key reach the API in the
 * order they were read.  A key whose version is in flight, backing off or
 * parked is busy: a newer version waits in pending until it settles, and a
 * version that a newer one replaces while both wait is settled unsent, so a
 * batch never carries two versions of a key and an older version can never
 * arrive after a newer one.
 *
 * Each read is a slice; a slice is settled when every event read in it is
 * (accepted, dead-lettered or replaced).  The frontier -- the end of the
 * last slice before the first unsettled one: a window's start snapshot and a
 * (txid, id) inside it -- is kept in monk.queue_state: after a crash the
 * worker reads on from there, sending everything past it again, in the same
 * order and with the same keys, so the API still ends with the newest
 * version of each key.  Segments whose events are all settled are
 * truncated, and the current segment moves on every few seconds.
 */
#include "postgres.h"

#include "access/twophase.h"
#include "access/xact.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "event.h"
#include "outbox.h"
#include "store.h"
#include "sender.h"
#include "settings.h"
#include "shmem.h"
#include "worker.h"

/* How long a segment stays the current one (when the next one is free). */
#define SEGMENT_ROTATE_MS 5000
/* How often segments are looked at for truncation and rotation. */
#define MAINTAIN_MS 1000
/* The frontier is saved at most this often while requests are in flight. */
#define SAVE_STATE_MS 200

/*
 * A window of the log: the events that became visible between two snapshots
 * of ours, read in (txid, id) order, in slices.
 */
typedef struct Window
{
	MonkOutboxSnapshot prev;	/* its start: the end of the previous window */
	MonkOutboxSnapshot snap;	/* its end */
	int			nslices;		/* slices of it not yet behind the frontier */
	bool		read_whole;		/* every event of it has been read */
} Window;

/*
 * One read of a window (a tick): the frontier moves past it once every event
 * read in it is settled (and past the window with its last slice).
 */
typedef struct Slice
{
	Window	   *window;
	int64		unsettled;		/* events read in it and not settled */
	bool		has_end;		/* it read events: end_* is the last one */
	uint64		end_txid;
	int64		end_id;
	bool		ends_window;	/* the window was read whole with it */
	dlist_node	node;
} Slice;

/* The versions in memory of the keys with one hash. */
typedef struct KeyEntry
{
	uint64		hash;			/* the hash table's key */
	int			busy;			/* versions handed to the sender, not settled */
	dlist_head	pending;		/* versions waiting, oldest first */
} KeyEntry;

/* One event in memory, from its read until it settles. */
typedef struct Queued
{
	MonkOutboxRow row;			/* key and event: this item's own copies */
	Slice	   *slice;
	KeyEntry   *entry;
	bool		parked;			/* its batch was parked once */
	dlist_node	node;			/* in the worker's pending list */
	dlist_node	enode;			/* in its entry's pending list */
} Queued;

/* An accepted batch to keep in monk.sent_batch. */
typedef struct SentBatch
{
	int			segment;
	int			n;
	uint64	   *txids;
	int64	   *ids;
	long		status;
	int			attempts;
	dlist_node	node;
} SentBatch;

/* The state of one worker. */
typedef struct MonkWorker
{
	MonkWorkerSlot *slot;
	MonkSender *sender;
	MemoryContext cxt;			/* items, ticks, chunks */
	bool		ready;			/* the log's state is loaded */

	/* reading */
	Window	   *window;			/* the window being read, or NULL */
	Slice	   *slice;			/* the slice being read */
	uint64	   *late;			/* the window's transactions finished since
								 * its start (late ones) */
	int			nlate;
	int			late_pos;		/* the late one being read; nlate: the range */
	uint64		pos_txid;		/* where the read goes on from */
	int64		pos_id;
	dlist_head	slices;			/* oldest first */
	MonkOutboxSnapshot next_prev;	/* the start of the next window */
	bool		need_read;
	uint64		read_base;		/* committed count before the last read */

	/* waiting and sending */
	HTAB	   *keys;			/* KeyEntry by hash of the key */
	dlist_head	pending;		/* items read, not yet in a chunk */
	dlist_head	chunks;			/* submitted, not yet settled */
	int			nchunks;

	/* recording */
	MonkOutboxState state;
	bool		state_dirty;	/* the frontier moved since it was saved */
	TimestampTz saved_at;
	TimestampTz maintained_at;
	bool		seen_in_cur;	/* events were read from the current segment */
	dlist_head	sent;			/* SentBatch to record */
	HTAB	   *accepted;		/* at start: events accepted past the frontier */
	int64	   *unpark;			/* settled ids that were parked once */
	int			nunpark;
	int			unpark_cap;
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
	const List *names = MonkDatabaseList();
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
	slot->depth_known = false;
	slot->state = MONK_STATE_STOPPED;
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

/* Room for "need" elements of "size" bytes in an array of capacity *cap. */
static void *
Grow(MemoryContext cxt, void *array, Size size, int *cap, int need)
{
	if (need <= *cap)
		return array;
	*cap = Max(*cap * 2, need);
	return array ? repalloc(array, size * *cap) : MemoryContextAlloc(cxt, size * *cap);
}

/* A deep copy of a snapshot in cxt. */
static void
CopySnapshot(MonkOutboxSnapshot *dst, const MonkOutboxSnapshot *src, MemoryContext cxt)
{
	*dst = *src;
	dst->xip = MemoryContextAlloc(cxt, sizeof(uint64) * Max(src->nxip, 1));
	memcpy(dst->xip, src->xip, sizeof(uint64) * src->nxip);
}

/* ------------------------------------------------------------------------
 * Slices and the frontier
 * ------------------------------------------------------------------------
 */

/*
 * Move the frontier past every leading slice whose events are all settled:
 * to the slice's last event inside its window, or past the window with its
 * last slice.
 */
static void
AdvanceFrontier(MonkWorker *w)
{
	MonkOutboxState *st = &w->state;

	while (!dlist_is_empty(&w->slices))
	{
		Slice	   *sl = dlist_head_element(Slice, node, &w->slices);
		Window	   *win = sl->window;

		if (sl->unsettled > 0 || sl == w->slice)
			break;
		if (sl->ends_window)
		{
			pfree(st->frontier.xip);
			CopySnapshot(&st->frontier, &win->snap, w->cxt);
			st->in_window = false;
			w->state_dirty = true;
		}
		else if (sl->has_end)
		{
			if (!st->in_window)
			{
				CopySnapshot(&st->window, &win->snap, w->cxt);
				st->in_window = true;
			}
			st->pos_txid = sl->end_txid;
			st->pos_id = sl->end_id;
			w->state_dirty = true;
		}
		dlist_delete(&sl->node);
		pfree(sl);
		if (--win->nslices == 0 && win->read_whole)
		{
			pfree(win->prev.xip);
			pfree(win->snap.xip);
			pfree(win);
		}
	}
	if (!st->in_window && st->window.xip)
	{
		pfree(st->window.xip);
		st->window.xip = NULL;
	}
}

/* An event is done with: accepted, dead-lettered or replaced by a newer one. */
static void
SettleItem(MonkWorker *w, Queued *item, bool was_sent)
{
	KeyEntry   *entry = item->entry;

	if (was_sent)
		entry->busy--;
	if (entry->busy == 0 && dlist_is_empty(&entry->pending))
		hash_search(w->keys, &entry->hash, HASH_REMOVE, NULL);
	if (item->parked)
	{
		w->unpark = Grow(w->cxt, w->unpark, sizeof(int64), &w->unpark_cap, w->nunpark + 1);
		w->unpark[w->nunpark++] = item->row.id;
	}
	item->slice->unsettled--;
	pg_atomic_fetch_add_u64(&w->slot->settled, 1);
	pfree(item);
}

/* ------------------------------------------------------------------------
 * Reading the log
 * ------------------------------------------------------------------------
 */

/* An event accepted past the frontier before a restart. */
typedef struct AcceptedKey
{
	uint64		txid;
	int64		id;
} AcceptedKey;

static void
AddAccepted(void *arg, uint64 txid, int64 id)
{
	MonkWorker *w = arg;
	AcceptedKey key = {txid, id};

	(void) hash_search(w->accepted, &key, HASH_ENTER, NULL);
}

/* Was this event accepted before a restart?  It is then settled already. */
static bool
AcceptedBefore(MonkWorker *w, const MonkOutboxRow *row)
{
	AcceptedKey key = {row->txid, row->id};
	bool		found = false;

	if (w->accepted)
		(void) hash_search(w->accepted, &key, HASH_REMOVE, &found);
	return found;
}

/* Keep one event read: it waits in pending, replacing an older version. */
static void
AddRow(void *arg, const MonkOutboxRow *row)
{
	MonkWorker *w = arg;
	Queued	   *item = MemoryContextAlloc(w->cxt, sizeof(Queued) + row->key_len + row->event_len + 2);
	char	   *key = (char *) (item + 1);
	char	   *event = key + row->key_len + 1;
	uint64		hash = hash_bytes_extended((const unsigned char *) row->key, row->key_len, 0);
	KeyEntry   *entry;
	bool		found;
	dlist_mutable_iter iter;
	dlist_head	replaced;

	w->pos_txid = row->txid;
	w->pos_id = row->id;
	w->slice->has_end = true;
	w->slice->end_txid = row->txid;
	w->slice->end_id = row->id;
	if (AcceptedBefore(w, row))
	{
		pfree(item);
		pg_atomic_fetch_add_u64(&w->slot->settled, 1);
		return;
	}
	memcpy(key, row->key, row->key_len);
	key[row->key_len] = '\0';
	memcpy(event, row->event, row->event_len);
	event[row->event_len] = '\0';
	item->row = *row;
	item->row.key = key;
	item->row.event = event;
	item->slice = w->slice;
	item->parked = false;
	w->slice->unsettled++;
	if (row->segment == w->state.cur_segment)
		w->seen_in_cur = true;

	entry = hash_search(w->keys, &hash, HASH_ENTER, &found);
	if (!found)
	{
		entry->busy = 0;
		dlist_init(&entry->pending);
	}
	item->entry = entry;

	dlist_push_tail(&w->pending, &item->node);

	/* a waiting older version of the same key need not be sent at all */
	dlist_init(&replaced);
	dlist_foreach_modify(iter, &entry->pending)
	{
		Queued	   *old = dlist_container(Queued, enode, iter.cur);

		if (old->row.key_len == row->key_len && memcmp(old->row.key, key, row->key_len) == 0)
		{
			dlist_delete(&old->enode);
			dlist_delete(&old->node);
			dlist_push_tail(&replaced, &old->enode);
		}
	}
	dlist_push_tail(&entry->pending, &item->enode);
	dlist_foreach_modify(iter, &replaced)
	{
		Queued	   *old = dlist_container(Queued, enode, iter.cur);

		dlist_delete(&old->enode);
		SettleItem(w, old, false);
	}
}

/*
 * Open a window ending at snap (a snapshot of our own, or the one the
 * frontier was in at start), starting where the previous one ended: the
 * transactions that were in progress at its start and have finished by its
 * end are read first, one by one (late commits), then the range of newer
 * transaction ids; both in (txid, id) order.
 */
static void
OpenWindow(MonkWorker *w, const MonkOutboxSnapshot *snap)
{
	Window	   *win = MemoryContextAllocZero(w->cxt, sizeof(Window));

	CopySnapshot(&win->prev, &w->next_prev, w->cxt);
	CopySnapshot(&win->snap, snap, w->cxt);
	if (w->late)
		pfree(w->late);
	w->late = MemoryContextAlloc(w->cxt, sizeof(uint64) * Max(win->prev.nxip, 1));
	w->nlate = 0;
	for (int i = 0; i < win->prev.nxip; i++)
	{
		if (MonkOutboxSnapshotSees(&win->snap, win->prev.xip[i]))
			w->late[w->nlate++] = win->prev.xip[i];
	}
	w->late_pos = 0;
	w->pos_txid = 0;
	w->pos_id = 0;
	w->window = win;
}

/*
 * Go on reading the window the frontier was in when the worker stopped, from
 * its last settled event.
 */
static void
ResumeWindow(MonkWorker *w)
{
	MonkOutboxState *st = &w->state;

	OpenWindow(w, &st->window);
	if (st->pos_txid >= w->window->prev.xmax)
	{
		w->late_pos = w->nlate;
		w->pos_txid = st->pos_txid;
		w->pos_id = st->pos_id;
		return;
	}
	while (w->late_pos < w->nlate && w->late[w->late_pos] < st->pos_txid)
		w->late_pos++;
	if (w->late_pos < w->nlate && w->late[w->late_pos] == st->pos_txid)
		w->pos_id = st->pos_id;
}

/* The window has been read whole: its end is the start of the next. */
static void
EndWindow(MonkWorker *w)
{
	Window	   *win = w->window;

	win->read_whole = true;
	w->slice->ends_window = true;
	pfree(w->next_prev.xip);
	CopySnapshot(&w->next_prev, &win->snap, w->cxt);
	w->window = NULL;
	/* every event accepted before a restart was in the first window */
	if (w->accepted)
	{
		hash_destroy(w->accepted);
		w->accepted = NULL;
	}
}

/*
 * Read up to "want" events into pending, as one slice.  Returns true when
 * that many were read (more may be waiting).
 */
static bool
ReadEvents(MonkWorker *w, int want)
{
	int			asked = want;

	w->read_base = pg_atomic_read_u64(&w->slot->committed);
	MonkOutboxBegin("monk: reading queued events");
	if (w->window == NULL)
	{
		MonkOutboxSnapshot snap;

		MonkOutboxTakeSnapshot(&snap, CurrentMemoryContext);
		OpenWindow(w, &snap);
	}
	w->slice = MemoryContextAllocZero(w->cxt, sizeof(Slice));
	w->slice->window = w->window;
	w->window->nslices++;
	dlist_push_tail(&w->slices, &w->slice->node);
	while (want > 0 && w->window != NULL)
	{
		int			got;

		if (w->late_pos < w->nlate)
		{
			got = MonkOutboxReadTxid(w->late[w->late_pos], w->pos_id, want, AddRow, w);
			if (got < want)
			{
				w->late_pos++;
				w->pos_id = 0;
			}
		}
		else
		{
			got = MonkOutboxReadRange(w->window->prev.xmax, w->window->snap.xmax, w->pos_txid, w->pos_id,
									  w->window->snap.xip, w->window->snap.nxip, want, AddRow, w);
			if (got < want)
				EndWindow(w);
		}
		want -= got;
	}
	MonkOutboxCommit();
	w->slice = NULL;
	AdvanceFrontier(w);
	return want == 0 && asked > 0;
}

/* ------------------------------------------------------------------------
 * Handing events to the sender
 * ------------------------------------------------------------------------
 */

/* How many events make a batch: monk.batch_size may have changed. */
static int
BatchTarget(void)
{
	return monk_batch_size;
}

/*
 * Count the pending events that may go now (their key is not busy), up to
 * the batch size, and when the oldest of them was queued.
 */
static int
CountSendable(MonkWorker *w, TimestampTz *oldest)
{
	int			n = 0;
	int			target = BatchTarget();
	dlist_iter	iter;

	*oldest = 0;
	dlist_foreach(iter, &w->pending)
	{
		Queued	   *item = dlist_container(Queued, node, iter.cur);

		if (item->entry->busy > 0 || dlist_head_element(Queued, enode, &item->entry->pending) != item)
			continue;
		if (*oldest == 0 || item->row.queued_at < *oldest)
			*oldest = item->row.queued_at;
		if (++n >= target)
			break;
	}
	return n;
}

/* Hand the pending events that may go (one version per key) to the sender. */
static void
SubmitPending(MonkWorker *w)
{
	int			target = BatchTarget();
	MonkChunk  *chunk = MonkChunkCreate(w->cxt, target);
	dlist_mutable_iter iter;

	dlist_foreach_modify(iter, &w->pending)
	{
		Queued	   *item = dlist_container(Queued, node, iter.cur);

		if (item->entry->busy > 0)
			continue;
		dlist_delete(&item->node);
		dlist_delete(&item->enode);
		item->entry->busy++;
		MonkChunkAdd(chunk, item->row.id, item->row.event, item->row.event_len, item->row.queued_at);
		MonkChunkSetItem(chunk, item);
		if (chunk->n >= target)
			break;
	}
	dlist_push_tail(&w->chunks, &chunk->node);
	w->nchunks++;
	MonkSenderSubmit(w->sender, chunk);
}

/* The items of a batch. */
static Queued *
BatchItem(MonkBatch *batch, int i)
{
	return (Queued *) batch->chunk->items[batch->start + i];
}

static void
OnAccepted(void *arg, MonkBatch *batch)
{
	MonkWorker *w = arg;

	/*
	 * With monk.retention, keep what was sent for monk.sent: one row per
	 * segment the batch's events are in.  (After a restart, events accepted
	 * past the frontier are sent again in their order, so the newest version
	 * of each key still arrives last; these rows spare sending them again.)
	 */
	if (monk_retention > 0)
	{
		for (int seg = 0; seg < MONK_SEGMENTS; seg++)
		{
			SentBatch  *sb = NULL;

			for (int i = 0; i < batch->count; i++)
			{
				Queued	   *item = BatchItem(batch, i);

				if (item->row.segment != seg)
					continue;
				if (sb == NULL)
				{
					sb = MemoryContextAllocZero(w->cxt, sizeof(SentBatch));
					sb->segment = seg;
					sb->txids = MemoryContextAlloc(w->cxt, sizeof(uint64) * batch->count);
					sb->ids = MemoryContextAlloc(w->cxt, sizeof(int64) * batch->count);
					sb->status = batch->req.status;
					sb->attempts = batch->attempts + 1;
					dlist_push_tail(&w->sent, &sb->node);
				}
				sb->txids[sb->n] = item->row.txid;
				sb->ids[sb->n++] = item->row.id;
			}
		}
	}
	for (int i = 0; i < batch->count; i++)
		SettleItem(w, BatchItem(batch, i), true);
	AdvanceFrontier(w);
}

static void
OnRefused(void *arg, MonkBatch *batch, long status, const char *body)
{
	MonkWorker *w = arg;
	Queued	   *item = BatchItem(batch, 0);
	char	   *error = psprintf("refused by the Events API (HTTP %ld)", status);

	MonkDeadLetter dl = {
		.source = "outbox",
		.source_id = item->row.id,
		.key = item->row.key,
		.key_len = item->row.key_len,
		.event = item->row.event,
		.event_len = item->row.event_len,
		.queued_at = item->row.queued_at,
		.has_status = true,
		.status = status,
		.error = error,
		.response = body,
		.attempts = batch->attempts + 1
	};

	MonkOutboxBegin("monk: dead-lettering a refused event");
	MonkDeadLetterInsert(&dl);
	MonkOutboxNotify(AlertPayload(w, "dead_letter", 1, status));
	MonkOutboxCommit();
	ereport(LOG,
			(errmsg("monk: the Events API refused event " INT64_FORMAT " (HTTP %ld); it was moved to monk.dead_letter",
					item->row.id, status)));
	SettleItem(w, item, true);
	AdvanceFrontier(w);
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
	MonkOutboxBegin("monk: parking a failing batch");
	MonkOutboxPark(ids, batch->count, batch->attempts, status, error, next);
	MonkOutboxCommit();
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

	SetState(w, MONK_STATE_PAUSED_AUTH);
	ereport(WARNING,
			(errmsg("monk: the Events API refused the API key (HTTP %ld); sending is paused", status),
			 errhint("Set monk.api_key to a valid key and reload the configuration; no event is lost meanwhile.")));
	MonkOutboxBegin("monk: reporting an authentication failure");
	MonkOutboxNotify(AlertPayload(w, "auth_failed", batch->count, status));
	MonkOutboxCommit();
}

static void
OnChunkDone(void *arg, MonkChunk *chunk)
{
	MonkWorker *w = arg;

	dlist_delete(&chunk->node);
	w->nchunks--;
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

static const MonkSenderOps worker_ops = {
	OnAccepted, OnRefused, OnParked, OnAuthFailed, OnChunkDone, OnCount, OnOutcome, OnCircuit
};

/* ------------------------------------------------------------------------
 * Recording progress: the frontier, what was sent, the segments
 * ------------------------------------------------------------------------
 */

/*
 * Move the current segment on when it has served long enough and the next
 * one is free (truncated since it was last current); truncate the others
 * once all their events are settled (and monk.retention has passed).
 * Returns true when the current segment changed.
 */
static bool
MaintainSegments(MonkWorker *w, TimestampTz now)
{
	MonkOutboxState *st = &w->state;
	int			next = (st->cur_segment + 1) % MONK_SEGMENTS;
	MonkOutboxSegment *cur = &st->segments[st->cur_segment];
	MonkOutboxSegment *nseg = &st->segments[next];

	for (int s = 0; s < MONK_SEGMENTS; s++)
	{
		MonkOutboxSegment *seg = &st->segments[s];

		/* used since it was last truncated: truncate it when it can be */
		if (s != st->cur_segment && seg->rotated_at != 0 && seg->truncated_at <= seg->rotated_at)
			(void) MonkOutboxTryTruncate(st, s, monk_retention);
	}
	if (w->seen_in_cur &&
		TimestampDifferenceExceeds(cur->rotated_at, now, SEGMENT_ROTATE_MS) &&
		(nseg->rotated_at == 0 || nseg->truncated_at > nseg->rotated_at))
	{
		MonkOutboxRotate(st, next);
		w->seen_in_cur = false;
		w->state_dirty = false;
		return true;
	}
	return false;
}

/*
 * Record what settled since the last call, in one transaction: the batches
 * to keep for monk.sent, the retry state to forget, the frontier, and the
 * segments' upkeep.  With force (idle, stopping), the frontier is saved
 * whatever the time since the last save.
 */
static void
RecordProgress(MonkWorker *w, bool force)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		due = force || TimestampDifferenceExceeds(w->saved_at, now, SAVE_STATE_MS);
	bool		save = w->state_dirty && due;
	bool		maintain = TimestampDifferenceExceeds(w->maintained_at, now, MAINTAIN_MS);
	bool		rotated = false;
	dlist_mutable_iter iter;

	if (!save && !maintain && dlist_is_empty(&w->sent) && w->nunpark == 0)
		return;

	MonkOutboxBegin("monk: recording delivered events");
	dlist_foreach_modify(iter, &w->sent)
	{
		SentBatch  *sb = dlist_container(SentBatch, node, iter.cur);

		MonkOutboxRecordSent(sb->segment, sb->txids, sb->ids, sb->n, sb->status, sb->attempts);
		dlist_delete(&sb->node);
		pfree(sb->txids);
		pfree(sb->ids);
		pfree(sb);
	}
	if (w->nunpark > 0)
	{
		MonkOutboxUnpark(w->unpark, w->nunpark);
		w->nunpark = 0;
	}
	if (save)
	{
		MonkOutboxSaveState(&w->state);
		w->state_dirty = false;
		w->saved_at = now;
	}
	if (maintain)
	{
		rotated = MaintainSegments(w, now);
		w->maintained_at = now;
	}
	MonkOutboxCommit();
	if (rotated)
		pg_atomic_write_u32(&w->slot->segment, (uint32) w->state.cur_segment);
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

	MonkOutboxBegin("monk: looking for the outbox");
	schema = MonkOutboxFindSchema();
	if (schema != MONK_OUTBOX_LOG)
	{
		MonkOutboxCommit();
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
	MonkOutboxLoadState(&w->state, w->cxt);
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(AcceptedKey);
		ctl.entrysize = sizeof(AcceptedKey);
		ctl.hcxt = w->cxt;
		w->accepted = hash_create("monk accepted", 1024, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		MonkOutboxForEachAccepted(&w->state.frontier, AddAccepted, w);
	}
	pg_atomic_write_u64(&w->slot->settled, 0);
	committed = pg_atomic_read_u64(&w->slot->committed);
	unsettled = MonkOutboxCountUnsettled(&w->state.frontier);
	MonkOutboxCommit();

	CopySnapshot(&w->next_prev, &w->state.frontier, w->cxt);
	if (w->state.in_window)
		ResumeWindow(w);
	w->slot->depth_base = unsettled - (int64) committed;
	pg_write_barrier();
	w->slot->depth_known = true;
	pg_atomic_write_u32(&w->slot->segment, (uint32) w->state.cur_segment);
	w->ready = true;
	w->need_read = true;
	return true;
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
	if (w->ready)
		RecordProgress(w, true);
}

/* Is a segment waiting to be truncated, or the current one to move on? */
static bool
SegmentsPending(MonkWorker *w)
{
	MonkOutboxState *st = &w->state;

	if (w->seen_in_cur || w->state_dirty)
		return true;
	for (int s = 0; s < MONK_SEGMENTS; s++)
	{
		MonkOutboxSegment *seg = &st->segments[s];

		if (s != st->cur_segment && seg->rotated_at != 0 && seg->truncated_at <= seg->rotated_at)
			return true;
	}
	return false;
}

/* Publish what the worker is doing for monk.status. */
static void
PublishState(MonkWorker *w)
{
	if (w->sender->paused)
		SetState(w, MONK_STATE_PAUSED_AUTH);
	else if (w->sender->circuit.state == MONK_CIRCUIT_OPEN)
		SetState(w, MONK_STATE_CIRCUIT_OPEN);
	else if (w->sender->inflight > 0)
		SetState(w, MONK_STATE_SENDING);
	else if (w->sender->nwaiting > 0)
		SetState(w, MONK_STATE_BACKOFF);
	else
		SetState(w, MONK_STATE_IDLE);
}

/* Is there room for another batch in flight? */
static bool
HasRoom(MonkWorker *w)
{
	return !w->sender->paused && w->nchunks < CHUNKS_AHEAD;
}

/*
 * Read while there is room for another batch and too few events wait for
 * one.  Returns how many wait, and in *oldest when the oldest was queued.
 */
static int
ReadIfRoom(MonkWorker *w, TimestampTz *oldest)
{
	int			sendable = CountSendable(w, oldest);

	if (w->need_read && HasRoom(w) && sendable < BatchTarget())
	{
		w->need_read = ReadEvents(w, BatchTarget() - sendable);
		sendable = CountSendable(w, oldest);
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
	if (sendable < BatchTarget() && now < due)
		return (long) ((due - now + 999) / 1000);
	SubmitPending(w);
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
		wake_at = w->read_base + (sendable > 0 ? Max(BatchTarget() - sendable, 1) : 1);
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
	if (timeout >= 0 && timeout <= MAINTAIN_MS)
		return timeout;
	RecordProgress(w, true);
	pgstat_report_stat(true);
	return SegmentsPending(w) ? MAINTAIN_MS : timeout;
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
	RecordProgress(w, false);

	sendable = ReadIfRoom(w, &oldest);
	timeout = FlushIfDue(w, sendable, oldest);
	PublishState(w);
	timeout = EarlierTimeout(timeout, MonkSenderNextWakeMs(w->sender));
	timeout = ArmWakeup(w, sendable, timeout);
	return BeforeSleep(w, timeout);
}

/* Entry point of a monk worker; arg is its slot number. */
void
MonkWorkerMain(Datum arg)
{
	int			slotno = DatumGetInt32(arg);
	MonkWorker	w;
	MemoryContext loopcxt;
	HASHCTL		ctl;

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
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(KeyEntry);
	ctl.hcxt = w.cxt;
	w.keys = hash_create("monk keys", 1024, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	dlist_init(&w.slices);
	dlist_init(&w.pending);
	dlist_init(&w.chunks);
	dlist_init(&w.sent);
	w.sender = MonkSenderCreate(&worker_ops, &w, w.cxt);

	ereport(LOG, (errmsg("monk worker started for database \"%s\"", w.slot->dbname)));

	loopcxt = AllocSetContextCreate(TopMemoryContext, "monk worker loop", ALLOCSET_DEFAULT_SIZES);
	while (!shutdown_requested)
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
			SetState(&w, MONK_STATE_IDLE);
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
	proc_exit(1);
}
