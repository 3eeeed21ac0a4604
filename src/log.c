/*
 * log.c
 *		The outbox's log as the worker reads it: windows read in slices, the
 *		rule that decides which version of a key wins, one version of a key
 *		in flight at a time, settling, the frontier, and the segments'
 *		upkeep.  log.h states the invariants this file keeps.
 *
 * The statements themselves are outbox_consumer.c's; what is sent, and what
 * an answer means, is the worker's (worker.c) and the sender's.
 */
#include "postgres.h"

#include "access/xlog.h"
#include "common/hashfn.h"
#include "mb/pg_wchar.h"
#include "utils/hsearch.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "http.h"
#include "log.h"
#include "outbox.h"
#include "settings.h"
#include "standby.h"
#include "window_keys.h"
#include "xact.h"

/* How long a segment stays the current one (when the next one is free). */
#define SEGMENT_ROTATE_MS 5000
/* The frontier is saved at most this often while requests are in flight. */
#define SAVE_STATE_MS 200

/*
 * A window of the log: the events that became visible between two snapshots
 * of ours, read in (txid, id) order, in slices (rule 1).
 */
typedef struct MonkWindow
{
	MonkOutboxSnapshot prev;	/* its start: the end of the previous window */
	MonkOutboxSnapshot snap;	/* its end */
	int			nslices;		/* slices of it not yet behind the frontier */
	bool		read_whole;		/* every event of it has been read */
	uint64		base;			/* the committed count read before its
								 * snapshot (0: unknown, a resumed window) */

	MonkWindowKeys keys;		/* which version of a key wins in it */
} MonkWindow;

/*
 * One read of a window: the frontier moves past it once every event read in
 * it is settled (and past the window with its last slice; rules 4 and 5).
 */
typedef struct MonkSlice
{
	MonkWindow *window;
	int64		unsettled;		/* events read in it and not settled */
	bool		has_end;		/* it read events: end_* is the last one */
	uint64		end_txid;
	int64		end_id;
	bool		ends_window;	/* the window was read whole with it */
	dlist_node	node;
} MonkSlice;

/* The versions in memory of the keys with one hash (rule 3). */
typedef struct MonkKeyEntry
{
	uint64		hash;			/* the hash table's key */
	int			busy;			/* versions handed to the sender, not settled */
	dlist_head	pending;		/* versions waiting, oldest first */
} MonkKeyEntry;

/* An accepted batch to keep in monk.sent_batch. */
typedef struct MonkSentBatch
{
	int			segment;
	int			n;
	uint64	   *txids;
	int64	   *ids;
	long		status;
	int			attempts;
	dlist_node	node;
} MonkSentBatch;

struct MonkLog
{
	MemoryContext cxt;			/* slices, windows */
	MemoryContext items_cxt;	/* items: allocated in reading order and
								 * mostly freed in it, each at its own size */
	MemoryContext waiting_cxt;	/* items that wait for an older version of
								 * their key: moved here, so that they hold no
								 * block of items_cxt in place */
	MonkWorkerSlot *slot;		/* counters: committed, settled, segment */
	void		(*on_maintain) (void *arg);
	void	   *on_maintain_arg;

	/* reading */
	MonkWindow *window;			/* the window being read, or NULL */
	MonkSlice  *slice;			/* the slice being read */
	uint64	   *late;			/* the window's transactions finished since
								 * its start (late ones) */
	int			nlate;
	int			late_pos;		/* the late one being read; nlate: the range */
	uint64		pos_txid;		/* where the read goes on from */
	int64		pos_id;
	dlist_head	slices;			/* oldest first */
	MonkOutboxSnapshot next_prev;	/* the start of the next window */
	uint64		read_base;		/* committed count before the last read */

	/* the standbys (standby.c): the next window opens once they flushed */
	MonkGate	gate;
	bool		has_next_snap;	/* next_snap is taken, its window not open */
	MonkOutboxSnapshot next_snap;
	uint64		next_snap_base; /* the committed count read before it */

	/* waiting */
	HTAB	   *keys;			/* MonkKeyEntry by hash of the key */
	dlist_head	pending;		/* items read, not yet handed over */
	int64		pending_bytes;	/* their events' size */

	/* recording */
	MonkOutboxState state;
	bool		state_dirty;	/* the frontier moved since it was saved */
	TimestampTz saved_at;
	TimestampTz maintained_at;
	bool		seen_in_cur;	/* events were read from the current segment */
	dlist_head	sent;			/* MonkSentBatch to record */
	int64	   *unpark;			/* settled ids that were parked once */
	int			nunpark;
	int			unpark_cap;
};

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
AdvanceFrontier(MonkLog *log)
{
	MonkOutboxState *st = &log->state;

	while (!dlist_is_empty(&log->slices))
	{
		MonkSlice  *sl = dlist_head_element(MonkSlice, node, &log->slices);
		MonkWindow *win = sl->window;

		if (sl->unsettled > 0 || sl == log->slice)
			break;
		if (sl->ends_window)
		{
			pfree(st->frontier.xip);
			CopySnapshot(&st->frontier, &win->snap, log->cxt);
			st->in_window = false;
			log->state_dirty = true;
		}
		else if (sl->has_end)
		{
			if (!st->in_window)
			{
				CopySnapshot(&st->window, &win->snap, log->cxt);
				st->in_window = true;
			}
			st->pos_txid = sl->end_txid;
			st->pos_id = sl->end_id;
			log->state_dirty = true;
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
SettleItem(MonkLog *log, MonkQueued *item, bool was_sent)
{
	MonkKeyEntry *entry = item->entry;

	if (was_sent)
		entry->busy--;
	if (entry->busy == 0 && dlist_is_empty(&entry->pending))
		hash_search(log->keys, &entry->hash, HASH_REMOVE, NULL);
	if (item->parked)
	{
		log->unpark = Grow(log->cxt, log->unpark, sizeof(int64), &log->unpark_cap, log->nunpark + 1);
		log->unpark[log->nunpark++] = item->row.id;
	}
	item->slice->unsettled--;
	pg_atomic_fetch_add_u64(&log->slot->settled, 1);
	pfree(item);
}

/* ------------------------------------------------------------------------
 * Reading the log
 * ------------------------------------------------------------------------
 */

/*
 * Keep one event read: it waits in pending, replacing an older version of
 * its key, unless a newer version of the key was read already (it is then
 * settled unsent).
 */
static bool
AddRow(void *arg, const MonkOutboxRow *row)
{
	MonkLog    *log = arg;
	uint64		hash = hash_bytes_extended((const unsigned char *) row->key, row->key_len, 0);
	MonkQueued *item;
	char	   *key;
	char	   *event;
	MonkKeyEntry *entry;
	bool		found;
	dlist_mutable_iter iter;
	dlist_head	replaced;
	MonkOutboxRow converted;
	bool		not_utf8 = false;

	MonkVerdict verdict = MonkWindowKeysJudge(&log->window->keys, hash, row);

	if (verdict == MONK_VERSION_ASK_LOG)
		return false;
	log->pos_txid = row->txid;
	log->pos_id = row->id;
	log->slice->has_end = true;
	log->slice->end_txid = row->txid;
	log->slice->end_id = row->id;
	if (verdict == MONK_VERSION_SUPERSEDED)
	{
		pg_atomic_fetch_add_u64(&log->slot->settled, 1);
		return true;
	}

	/*
	 * The event as it is sent: UTF-8, converted here, in the read's
	 * transaction.  One that cannot be (queued before monk_send checked it)
	 * is kept as stored and dead-lettered, never retried.
	 */
	if (GetDatabaseEncoding() != PG_UTF8 && GetDatabaseEncoding() != PG_SQL_ASCII)
	{
		char	   *utf8 = MonkToUtf8NoError(row->event, row->event_len);

		if (utf8 == NULL)
			not_utf8 = true;
		else
		{
			converted = *row;
			converted.event = utf8;
			converted.event_len = strlen(utf8);
			row = &converted;
		}
	}
	item = MemoryContextAlloc(log->items_cxt, sizeof(MonkQueued) + row->key_len + row->event_len + 2);
	key = (char *) (item + 1);
	event = key + row->key_len + 1;
	memcpy(key, row->key, row->key_len);
	key[row->key_len] = '\0';
	memcpy(event, row->event, row->event_len);
	event[row->event_len] = '\0';
	if (row == &converted)
		pfree((char *) converted.event);
	item->row = *row;
	item->row.key = key;
	item->row.event = event;
	item->slice = log->slice;
	item->parked = false;
	item->waits = false;
	item->not_utf8 = not_utf8;
	log->slice->unsettled++;
	if (row->segment == log->state.cur_segment)
		log->seen_in_cur = true;

	entry = hash_search(log->keys, &hash, HASH_ENTER, &found);
	if (!found)
	{
		entry->busy = 0;
		dlist_init(&entry->pending);
	}
	item->entry = entry;

	dlist_push_tail(&log->pending, &item->node);
	log->pending_bytes += row->event_len;

	/* a waiting older version of the same key need not be sent at all */
	dlist_init(&replaced);
	dlist_foreach_modify(iter, &entry->pending)
	{
		MonkQueued *old = dlist_container(MonkQueued, enode, iter.cur);

		if (old->row.key_len == row->key_len && memcmp(old->row.key, key, row->key_len) == 0)
		{
			dlist_delete(&old->enode);
			dlist_delete(&old->node);
			log->pending_bytes -= old->row.event_len;
			dlist_push_tail(&replaced, &old->enode);
		}
	}
	dlist_push_tail(&entry->pending, &item->enode);
	dlist_foreach_modify(iter, &replaced)
	{
		MonkQueued *old = dlist_container(MonkQueued, enode, iter.cur);

		dlist_delete(&old->enode);
		SettleItem(log, old, false);
	}
	return true;
}


/*
 * The keys with several versions in the whole window, and the newest one's
 * id, from the log: for a window with more keys than memory keeps, or one
 * read partly before a restart (whose newer versions may have been sent
 * then).  They replace the keys kept in memory.  Between reads (not in a
 * read's callback: it runs a statement of its own).
 */
static void
LoadDups(MonkLog *log)
{
	MonkWindow *win = log->window;

	MonkOutboxLoadRepeatedKeys(win->prev.xmax, win->snap.xmax, win->snap.xip, win->snap.nxip,
							   log->late, log->nlate);
	MonkWindowKeysInLog(&win->keys);
}

/*
 * Open a window ending at snap (a snapshot of our own, or the one the
 * frontier was in at start), starting where the previous one ended: the
 * transactions that were in progress at its start and have finished by its
 * end are read first, one by one (late commits), then the range of newer
 * transaction ids; both in (txid, id) order.
 */
static void
OpenWindow(MonkLog *log, const MonkOutboxSnapshot *snap, uint64 base)
{
	MonkWindow *win = MemoryContextAllocZero(log->cxt, sizeof(MonkWindow));

	win->base = base;

	CopySnapshot(&win->prev, &log->next_prev, log->cxt);
	CopySnapshot(&win->snap, snap, log->cxt);
	MonkWindowKeysInit(&win->keys, log->cxt, false);
	if (log->late)
		pfree(log->late);
	log->late = MemoryContextAlloc(log->cxt, sizeof(uint64) * Max(win->prev.nxip, 1));
	log->nlate = 0;
	for (int i = 0; i < win->prev.nxip; i++)
	{
		if (MonkOutboxSnapshotSees(&win->snap, win->prev.xip[i]))
			log->late[log->nlate++] = win->prev.xip[i];
	}
	log->late_pos = 0;
	log->pos_txid = 0;
	log->pos_id = 0;
	log->window = win;
}

/*
 * Go on reading the window the frontier was in when the worker stopped, from
 * its last settled event.
 */
static void
ResumeWindow(MonkLog *log)
{
	MonkOutboxState *st = &log->state;

	OpenWindow(log, &st->window, 0);
	/* versions of it read before the restart may have been sent */
	log->window->keys.need_log = true;
	if (st->pos_txid >= log->window->prev.xmax)
	{
		log->late_pos = log->nlate;
		log->pos_txid = st->pos_txid;
		log->pos_id = st->pos_id;
		return;
	}
	while (log->late_pos < log->nlate && log->late[log->late_pos] < st->pos_txid)
		log->late_pos++;
	if (log->late_pos < log->nlate && log->late[log->late_pos] == st->pos_txid)
		log->pos_id = st->pos_id;
}

/* The window has been read whole: its end is the start of the next. */
static void
EndWindow(MonkLog *log)
{
	MonkWindow *win = log->window;

	win->read_whole = true;
	log->slice->ends_window = true;
	pfree(log->next_prev.xip);
	CopySnapshot(&log->next_prev, &win->snap, log->cxt);
	log->window = NULL;
	MonkWindowKeysRelease(&win->keys);
}

/* Milliseconds until the standbys are looked at again (-1: not waiting). */
long
MonkLogGateWaitMs(MonkLog *log)
{
	return MonkGateWaitMs(&log->gate);
}

/*
 * Read up to "want" events into pending, as one slice, within "budget" bytes
 * of events (the first always comes).  Returns true when more may be
 * waiting: that many were read, or the budget stopped the read.
 */
bool
MonkLogRead(MonkLog *log, int want, int64 budget)
{
	int			asked = want;
	bool		cut = false;
	bool		stale = false;	/* a window ended that events committed since
								 * its snapshot (counted in read_base) are not
								 * in */

	MonkWaitPointAlone("read");
	log->read_base = pg_atomic_read_u64(&log->slot->committed);
	if (MonkGateWaitMs(&log->gate) > 0)
		return false;
	MonkXactBegin("monk: reading queued events");
	if (log->window == NULL && !log->has_next_snap)
	{
		XLogRecPtr	end = MonkOutboxTakeSnapshot(&log->next_snap, log->cxt);

		log->has_next_snap = true;
		log->next_snap_base = log->read_base;
		if (MonkStandbysNamed())
			MonkGateAt(&log->gate, end);
	}
	if (!MonkGatePass(&log->gate))
	{
		MonkXactCommit();
		return false;
	}
	if (log->window == NULL)
	{
		OpenWindow(log, &log->next_snap, log->next_snap_base);
		pfree(log->next_snap.xip);
		log->has_next_snap = false;
	}

	log->slice = MemoryContextAllocZero(log->cxt, sizeof(MonkSlice));
	log->slice->window = log->window;
	log->window->nslices++;
	dlist_push_tail(&log->slices, &log->slice->node);
	while (want > 0 && log->window != NULL && !cut)
	{
		int			got;

		if (log->window->keys.need_log)
			LoadDups(log);

		if (log->late_pos < log->nlate)
		{
			got = MonkOutboxReadTxid(log->late[log->late_pos], log->pos_id, want, log->window->keys.in_log,
									 &budget, &cut, AddRow, log);
			if (got < want && !cut)
			{
				log->late_pos++;
				log->pos_id = 0;
			}
		}
		else
		{
			got = MonkOutboxReadRange(log->window->prev.xmax, log->window->snap.xmax, log->pos_txid, log->pos_id,
									  log->window->snap.xip, log->window->snap.nxip, want,
									  log->window->keys.in_log, &budget, &cut, AddRow, log);
			if (got < want && !cut)
			{
				stale |= log->window->base < log->read_base;
				EndWindow(log);
			}
		}
		want -= got;
		/* a row that needs the window's repeated keys: read them, go on */
		if (cut && log->window != NULL && log->window->keys.need_log)
			cut = false;
	}
	MonkXactCommit();
	log->slice = NULL;
	AdvanceFrontier(log);
	/* a window older than the count of events committed: read on at once */
	return ((want == 0 || cut) && asked > 0) || stale;
}

/* ------------------------------------------------------------------------
 * Start
 * ------------------------------------------------------------------------
 */

/*
 * The log of a worker, nothing read yet; on_maintain(arg), when given, runs
 * in the transaction of each upkeep of the segments (about every second).
 */
MonkLog *
MonkLogCreate(MemoryContext cxt, MonkWorkerSlot *slot, void (*on_maintain) (void *arg), void *arg)
{
	MonkLog    *log = MemoryContextAllocZero(cxt, sizeof(MonkLog));
	HASHCTL		ctl;

	log->cxt = cxt;
	/* an AllocSet would round an item of 2.1 kB up to 4 kB */
	log->items_cxt = GenerationContextCreate(cxt, "monk events read", 0, 8 * 1024, 1024 * 1024);
	log->waiting_cxt = AllocSetContextCreate(cxt, "monk events waiting", ALLOCSET_DEFAULT_SIZES);
	log->slot = slot;
	log->on_maintain = on_maintain;
	log->on_maintain_arg = arg;
	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(uint64);
	ctl.entrysize = sizeof(MonkKeyEntry);
	ctl.hcxt = cxt;
	log->keys = hash_create("monk keys", 1024, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	dlist_init(&log->slices);
	dlist_init(&log->pending);
	dlist_init(&log->sent);
	return log;
}

/*
 * Load the frontier and the segments' state, in the caller's transaction,
 * and publish the current segment; returns how many events are not settled.
 */
int64
MonkLogLoad(MonkLog *log)
{
	MonkOutboxLoadState(&log->state, log->cxt);
	pg_atomic_write_u32(&log->slot->segment, (uint32) log->state.cur_segment);
	return MonkOutboxCountUnsettled(&log->state.frontier);
}

/* Read on from the frontier: the next window starts there. */
void
MonkLogResume(MonkLog *log)
{
	CopySnapshot(&log->next_prev, &log->state.frontier, log->cxt);
	if (log->state.in_window)
	{
		ResumeWindow(log);
		/* what it holds committed before now: before the end of the WAL */
		if (MonkStandbysNamed() && !RecoveryInProgress())
			MonkGateAt(&log->gate, GetXLogInsertEndRecPtr());
	}
}

/*
 * How many events the frontier has not passed (settled ones among them that
 * it will pass in a moment), in the caller's transaction.
 */
int64
MonkLogCountUnsettled(MonkLog *log)
{
	return MonkOutboxCountUnsettled(&log->state.frontier);
}

/* The count of commits that had queued events when the last read began. */
uint64
MonkLogReadBase(MonkLog *log)
{
	return log->read_base;
}

/* ------------------------------------------------------------------------
 * Handing events to the sender, and their outcomes
 * ------------------------------------------------------------------------
 */

/* May this pending event go now (its key busy with no older version)? */
static bool
Sendable(MonkQueued *item)
{
	return item->entry->busy == 0 && dlist_head_element(MonkQueued, enode, &item->entry->pending) == item;
}

/*
 * Count the pending events that may go now (rule 3), up to target, and when
 * the oldest of them was queued.
 */
int
MonkLogCountSendable(MonkLog *log, int target, TimestampTz *oldest)
{
	int			n = 0;
	dlist_iter	iter;

	*oldest = 0;
	dlist_foreach(iter, &log->pending)
	{
		MonkQueued *item = dlist_container(MonkQueued, node, iter.cur);

		if (!Sendable(item))
			continue;
		if (*oldest == 0 || item->row.queued_at < *oldest)
			*oldest = item->row.queued_at;
		if (++n >= target)
			break;
	}
	return n;
}

/*
 * An item that waits for an older version of its key (in flight, backing off
 * or parked: maybe for long) is copied out of items_cxt, whose blocks are
 * freed only once all their items are: one such item would otherwise hold a
 * block of sent events in place.
 */
static void
MoveToWaiting(MonkLog *log, MonkQueued *item)
{
	Size		size = sizeof(MonkQueued) + item->row.key_len + item->row.event_len + 2;
	MonkQueued *copy = MemoryContextAlloc(log->waiting_cxt, size);

	memcpy(copy, item, size);
	copy->row.key = (char *) (copy + 1);
	copy->row.event = (char *) (copy + 1) + item->row.key_len + 1;
	copy->waits = true;
	dlist_insert_before(&item->node, &copy->node);
	dlist_delete(&item->node);
	dlist_insert_before(&item->enode, &copy->enode);
	dlist_delete(&item->enode);
	pfree(item);
}

/*
 * Hand up to target pending events that may go (one version per key) to
 * take(arg, item), until it declines one (a body full by bytes); their keys
 * are busy until they settle.  Returns how many were taken.
 */
int
MonkLogTake(MonkLog *log, int target, bool (*take) (void *arg, MonkQueued *item), void *arg)
{
	int			n = 0;
	dlist_mutable_iter iter;

	dlist_foreach_modify(iter, &log->pending)
	{
		MonkQueued *item = dlist_container(MonkQueued, node, iter.cur);

		if (item->entry->busy > 0)
		{
			if (!item->waits)
				MoveToWaiting(log, item);
			continue;
		}
		if (!take(arg, item))
			break;
		dlist_delete(&item->node);
		dlist_delete(&item->enode);
		item->entry->busy++;
		log->pending_bytes -= item->row.event_len;
		if (++n >= target)
			break;
	}
	return n;
}

/* The bytes of the events read and not yet handed over. */
int64
MonkLogPendingBytes(MonkLog *log)
{
	return log->pending_bytes;
}

/*
 * With monk.retention, keep what an accepted batch was, for monk.sent: one
 * row per segment its events are in (recorded by MonkLogRecord).
 */
void
MonkLogNoteAccepted(MonkLog *log, MonkQueued **items, int n, long status, int attempts)
{
	if (monk_retention <= 0)
		return;
	for (int seg = 0; seg < MONK_SEGMENTS; seg++)
	{
		MonkSentBatch *sb = NULL;

		for (int i = 0; i < n; i++)
		{
			MonkQueued *item = items[i];

			if (item->row.segment != seg)
				continue;
			if (sb == NULL)
			{
				sb = MemoryContextAllocZero(log->cxt, sizeof(MonkSentBatch));
				sb->segment = seg;
				sb->txids = MemoryContextAlloc(log->cxt, sizeof(uint64) * n);
				sb->ids = MemoryContextAlloc(log->cxt, sizeof(int64) * n);
				sb->status = status;
				sb->attempts = attempts;
				dlist_push_tail(&log->sent, &sb->node);
			}
			sb->txids[sb->n] = item->row.txid;
			sb->ids[sb->n++] = item->row.id;
		}
	}
}

/*
 * An event handed to the sender is done with (accepted or dead-lettered):
 * it settles (rule 4), and its key is free for a newer version.  Then
 * MonkLogAdvance moves the frontier.
 */
void
MonkLogSettle(MonkLog *log, MonkQueued *item)
{
	SettleItem(log, item, true);
}

/* Move the frontier past the slices now settled (rule 5). */
void
MonkLogAdvance(MonkLog *log)
{
	AdvanceFrontier(log);
}

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
MaintainSegments(MonkLog *log, TimestampTz now)
{
	MonkOutboxState *st = &log->state;
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
	if (log->seen_in_cur &&
		TimestampDifferenceExceeds(cur->rotated_at, now, SEGMENT_ROTATE_MS) &&
		(nseg->rotated_at == 0 || nseg->truncated_at > nseg->rotated_at))
	{
		MonkOutboxRotate(st, next);
		log->seen_in_cur = false;
		log->state_dirty = false;
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
MonkLogRecord(MonkLog *log, bool force)
{
	TimestampTz now = GetCurrentTimestamp();
	bool		due = force || TimestampDifferenceExceeds(log->saved_at, now, SAVE_STATE_MS);
	bool		save = log->state_dirty && due;
	bool		maintain = TimestampDifferenceExceeds(log->maintained_at, now, MONK_MAINTAIN_MS);
	bool		rotated = false;
	dlist_mutable_iter iter;

	if (!save && !maintain && dlist_is_empty(&log->sent) && log->nunpark == 0)
		return;

	MonkXactBegin("monk: recording delivered events");
	dlist_foreach_modify(iter, &log->sent)
	{
		MonkSentBatch *sb = dlist_container(MonkSentBatch, node, iter.cur);

		MonkOutboxRecordSent(sb->segment, sb->txids, sb->ids, sb->n, sb->status, sb->attempts);
		dlist_delete(&sb->node);
		pfree(sb->txids);
		pfree(sb->ids);
		pfree(sb);
	}
	if (log->nunpark > 0)
	{
		MonkOutboxUnpark(log->unpark, log->nunpark);
		log->nunpark = 0;
	}
	if (save)
	{
		MonkOutboxSaveState(&log->state);
		log->state_dirty = false;
		log->saved_at = now;
	}
	if (maintain)
	{
		rotated = MaintainSegments(log, now);
		if (log->on_maintain)
			log->on_maintain(log->on_maintain_arg);
		log->maintained_at = now;
	}
	MonkXactCommit();
	if (rotated)
		pg_atomic_write_u32(&log->slot->segment, (uint32) log->state.cur_segment);
}

/* Is a segment waiting to be truncated, or the current one to move on? */
bool
MonkLogSegmentsPending(MonkLog *log)
{
	MonkOutboxState *st = &log->state;

	if (log->seen_in_cur || log->state_dirty)
		return true;
	for (int s = 0; s < MONK_SEGMENTS; s++)
	{
		MonkOutboxSegment *seg = &st->segments[s];

		if (s != st->cur_segment && seg->rotated_at != 0 && seg->truncated_at <= seg->rotated_at)
			return true;
	}
	return false;
}
