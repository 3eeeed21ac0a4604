/*
 * pipeline.c
 *		A worker's events between the log and the Events API: read from the
 *		log in windows and slices, kept in memory in per-key order, handed to
 *		the sender in chunks, settled by its answers; the frontier behind the
 *		settled ones recorded with the segments' upkeep.
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
 *
 * The process around it -- start, the loop, the wake-up, shutdown -- is
 * worker.c's.
 */
#include "postgres.h"

#include "common/hashfn.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "event.h"
#include "outbox.h"
#include "store.h"
#include "worker_internal.h"
#include "xact.h"

/* How long a segment stays the current one (when the next one is free). */
#define SEGMENT_ROTATE_MS 5000
/* The frontier is saved at most this often while requests are in flight. */
#define SAVE_STATE_MS 200

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
		MonkSlice  *sl = dlist_head_element(MonkSlice, node, &w->slices);
		MonkWindow *win = sl->window;

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
SettleItem(MonkWorker *w, MonkQueued *item, bool was_sent)
{
	MonkKeyEntry *entry = item->entry;

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

/*
 * Has a newer version of this row's key been read in its window already (or,
 * once the window's repeated keys are known, is there one in the window)?
 * Within a window the version queued later -- the higher id -- wins; a
 * window's versions are read in (txid, id) order, which is not that order.
 */
static bool
Superseded(MonkWorker *w, uint64 hash, const MonkOutboxRow *row)
{
	MonkWindow *win = w->window;
	MonkWindowKey *k;
	bool		found;

	if (win->dups != NULL)
	{
		k = hash_search(win->dups, &hash, HASH_FIND, NULL);
		return k != NULL && k->max_id > row->id;
	}
	if (win->seen == NULL)
	{
		HASHCTL		ctl;

		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(uint64);
		ctl.entrysize = sizeof(MonkWindowKey);
		ctl.hcxt = w->cxt;
		win->seen = hash_create("monk window keys", 1024, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	k = hash_search(win->seen, &hash, HASH_ENTER, &found);
	if (found && k->max_id > row->id)
		return true;
	k->max_id = row->id;
	if (hash_get_num_entries(win->seen) > MONK_WINDOW_KEYS)
		win->need_dups = true;
	return false;
}

/*
 * Keep one event read: it waits in pending, replacing an older version of
 * its key, unless a newer version of the key was read already (it is then
 * settled unsent).
 */
static void
AddRow(void *arg, const MonkOutboxRow *row)
{
	MonkWorker *w = arg;
	uint64		hash = hash_bytes_extended((const unsigned char *) row->key, row->key_len, 0);
	MonkQueued *item;
	char	   *key;
	char	   *event;
	MonkKeyEntry *entry;
	bool		found;
	dlist_mutable_iter iter;
	dlist_head	replaced;

	w->pos_txid = row->txid;
	w->pos_id = row->id;
	w->slice->has_end = true;
	w->slice->end_txid = row->txid;
	w->slice->end_id = row->id;
	if (Superseded(w, hash, row))
	{
		pg_atomic_fetch_add_u64(&w->slot->settled, 1);
		return;
	}
	item = MemoryContextAlloc(w->cxt, sizeof(MonkQueued) + row->key_len + row->event_len + 2);
	key = (char *) (item + 1);
	event = key + row->key_len + 1;
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
		MonkQueued *old = dlist_container(MonkQueued, enode, iter.cur);

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
		MonkQueued *old = dlist_container(MonkQueued, enode, iter.cur);

		dlist_delete(&old->enode);
		SettleItem(w, old, false);
	}
}

/* One key with several versions in the window being read. */
static void
AddDup(void *arg, const char *key, int key_len, int64 max_id)
{
	MonkWindow *win = arg;
	uint64		hash = hash_bytes_extended((const unsigned char *) key, key_len, 0);
	MonkWindowKey *dup = hash_search(win->dups, &hash, HASH_ENTER, NULL);

	dup->max_id = max_id;
}

/*
 * The keys with several versions in the whole window, and the newest one's
 * id, from the log: for a window with more keys than memory keeps, or one
 * read partly before a restart (whose newer versions may have been sent
 * then).  They replace the keys kept in memory.  Between reads (not in a
 * read's callback: it runs a statement of its own).
 */
static void
LoadDups(MonkWorker *w)
{
	MonkWindow *win = w->window;
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(MonkWindowKey);
	ctl.hcxt = w->cxt;
	win->dups = hash_create("monk window repeated keys", 256, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	MonkOutboxReadRepeatedKeys(win->prev.xmax, win->snap.xmax, win->snap.xip, win->snap.nxip,
							   w->late, w->nlate, AddDup, win);
	if (win->seen != NULL)
	{
		hash_destroy(win->seen);
		win->seen = NULL;
	}
	win->need_dups = false;
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
	MonkWindow *win = MemoryContextAllocZero(w->cxt, sizeof(MonkWindow));

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
	/* versions of it read before the restart may have been sent */
	w->window->need_dups = true;
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
	MonkWindow *win = w->window;

	win->read_whole = true;
	w->slice->ends_window = true;
	pfree(w->next_prev.xip);
	CopySnapshot(&w->next_prev, &win->snap, w->cxt);
	w->window = NULL;
	if (win->seen)
		hash_destroy(win->seen);
	if (win->dups)
		hash_destroy(win->dups);
	win->seen = win->dups = NULL;
}

/*
 * Read up to "want" events into pending, as one slice.  Returns true when
 * that many were read (more may be waiting).
 */
bool
MonkPipelineRead(MonkWorker *w, int want)
{
	int			asked = want;

	MonkWaitPointAlone("read");
	w->read_base = pg_atomic_read_u64(&w->slot->committed);
	MonkXactBegin("monk: reading queued events");
	if (w->window == NULL)
	{
		MonkOutboxSnapshot snap;

		MonkOutboxTakeSnapshot(&snap, CurrentMemoryContext);
		OpenWindow(w, &snap);
	}

	w->slice = MemoryContextAllocZero(w->cxt, sizeof(MonkSlice));
	w->slice->window = w->window;
	w->window->nslices++;
	dlist_push_tail(&w->slices, &w->slice->node);
	while (want > 0 && w->window != NULL)
	{
		int			got;

		if (w->window->need_dups)
			LoadDups(w);

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
	MonkXactCommit();
	w->slice = NULL;
	AdvanceFrontier(w);
	return want == 0 && asked > 0;
}

/* ------------------------------------------------------------------------
 * Start
 * ------------------------------------------------------------------------
 */

/* The worker's empty pipeline: no key, slice, event or chunk in memory. */
void
MonkPipelineInit(MonkWorker *w)
{
	HASHCTL		ctl;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(MonkKeyEntry);
	ctl.hcxt = w->cxt;
	w->keys = hash_create("monk keys", 1024, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	dlist_init(&w->slices);
	dlist_init(&w->pending);
	dlist_init(&w->chunks);
	dlist_init(&w->sent);
}

/*
 * Load the log's state, and whether outbox events wait in the dead letters;
 * in the caller's transaction.
 */
void
MonkPipelineLoad(MonkWorker *w)
{
	MonkOutboxLoadState(&w->state, w->cxt);
	w->dead_letters = MonkDeadLettersOfOutbox();
}

/* Read on from the frontier: the next window starts there. */
void
MonkPipelineResume(MonkWorker *w)
{
	CopySnapshot(&w->next_prev, &w->state.frontier, w->cxt);
	if (w->state.in_window)
		ResumeWindow(w);
}

/* ------------------------------------------------------------------------
 * Handing events to the sender
 * ------------------------------------------------------------------------
 */

/*
 * Count the pending events that may go now (their key is not busy), up to
 * the batch size, and when the oldest of them was queued.
 */
int
MonkPipelineCountSendable(MonkWorker *w, TimestampTz *oldest)
{
	int			n = 0;
	int			target = MonkBatchTarget();
	dlist_iter	iter;

	*oldest = 0;
	dlist_foreach(iter, &w->pending)
	{
		MonkQueued *item = dlist_container(MonkQueued, node, iter.cur);

		if (item->entry->busy > 0 || dlist_head_element(MonkQueued, enode, &item->entry->pending) != item)
			continue;
		if (*oldest == 0 || item->row.queued_at < *oldest)
			*oldest = item->row.queued_at;
		if (++n >= target)
			break;
	}
	return n;
}

/* Hand the pending events that may go (one version per key) to the sender. */
void
MonkPipelineSubmit(MonkWorker *w)
{
	int			target = MonkBatchTarget();
	MonkChunk  *chunk = MonkChunkCreate(w->cxt, target);
	dlist_mutable_iter iter;

	dlist_foreach_modify(iter, &w->pending)
	{
		MonkQueued *item = dlist_container(MonkQueued, node, iter.cur);

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

	/*
	 * With monk.retention, keep what was sent for monk.sent: one row per
	 * segment the batch's events are in.  (After a restart, events accepted
	 * past the frontier are sent again in their order, so the newest version
	 * of each key still arrives last.)
	 */
	if (monk_retention > 0)
	{
		for (int seg = 0; seg < MONK_SEGMENTS; seg++)
		{
			MonkSentBatch *sb = NULL;

			for (int i = 0; i < batch->count; i++)
			{
				MonkQueued *item = BatchItem(batch, i);

				if (item->row.segment != seg)
					continue;
				if (sb == NULL)
				{
					sb = MemoryContextAllocZero(w->cxt, sizeof(MonkSentBatch));
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
	if (w->dead_letters)
		SupersedeDeadLetters(batch);
	for (int i = 0; i < batch->count; i++)
		SettleItem(w, BatchItem(batch, i), true);
	AdvanceFrontier(w);
}

static void
OnRefused(void *arg, MonkBatch *batch, long status, const char *body)
{
	MonkWorker *w = arg;
	MonkQueued *item = BatchItem(batch, 0);
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

	MonkXactBegin("monk: dead-lettering a refused event");
	MonkDeadLetterInsert(&dl);
	w->dead_letters = true;
	MonkOutboxNotify(AlertPayload(w, "dead_letter", 1, status));
	MonkXactCommit();
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

	MonkWorkerSetState(w, MONK_STATE_PAUSED_AUTH);
	ereport(WARNING,
			(errmsg("monk: the Events API refused the API key (HTTP %ld); sending is paused", status),
			 errhint("Set monk.api_key to a valid key and reload the configuration; no event is lost meanwhile.")));
	MonkXactBegin("monk: reporting an authentication failure");
	MonkOutboxNotify(AlertPayload(w, "auth_failed", batch->count, status));
	MonkXactCommit();
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

const MonkSenderOps MonkPipelineOps = {
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
void
MonkPipelineRecord(MonkWorker *w, bool force)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		due = force || TimestampDifferenceExceeds(w->saved_at, now, SAVE_STATE_MS);
	bool		save = w->state_dirty && due;
	bool		maintain = TimestampDifferenceExceeds(w->maintained_at, now, MONK_MAINTAIN_MS);
	bool		rotated = false;
	dlist_mutable_iter iter;

	if (!save && !maintain && dlist_is_empty(&w->sent) && w->nunpark == 0)
		return;

	MonkXactBegin("monk: recording delivered events");
	dlist_foreach_modify(iter, &w->sent)
	{
		MonkSentBatch *sb = dlist_container(MonkSentBatch, node, iter.cur);

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
		w->dead_letters = MonkDeadLettersOfOutbox();
		w->maintained_at = now;
	}
	MonkXactCommit();
	if (rotated)
		pg_atomic_write_u32(&w->slot->segment, (uint32) w->state.cur_segment);
}

/* Is a segment waiting to be truncated, or the current one to move on? */
bool
MonkPipelineSegmentsPending(MonkWorker *w)
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
