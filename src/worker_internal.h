/*
 * worker_internal.h
 *		The state of a monk worker, shared by the process (worker.c) and the
 *		pipeline of its events (pipeline.c).  For these two files only.
 */
#ifndef MONK_WORKER_INTERNAL_H
#define MONK_WORKER_INTERNAL_H

#include "lib/ilist.h"
#include "utils/hsearch.h"

#include "outbox.h"
#include "sender.h"
#include "settings.h"
#include "shmem.h"

/* How often segments are looked at for truncation and rotation. */
#define MONK_MAINTAIN_MS 1000

/*
 * Chunks read ahead of the requests: one more than can be in flight, so that
 * a batch is ready the moment a request slot frees.
 */
#define MONK_CHUNKS_AHEAD (monk_max_parallel_requests + 1)

/*
 * A window of the log: the events that became visible between two snapshots
 * of ours, read in (txid, id) order, in slices.
 */
typedef struct MonkWindow
{
	MonkOutboxSnapshot prev;	/* its start: the end of the previous window */
	MonkOutboxSnapshot snap;	/* its end */
	int			nslices;		/* slices of it not yet behind the frontier */
	bool		read_whole;		/* every event of it has been read */

	/*
	 * The newest version read of each key of the window (MonkWindowKey), up
	 * to MONK_WINDOW_KEYS keys; past them, or when the window was partly read
	 * before a restart, the keys with several versions in the whole window,
	 * from the log.
	 */
	HTAB	   *seen;
	HTAB	   *dups;
	bool		need_dups;
} MonkWindow;

/* A key of a window, and the id of its newest version (read, or in it). */
typedef struct MonkWindowKey
{
	uint64		hash;			/* the hash table's key */
	int64		max_id;
} MonkWindowKey;

/*
 * Keys of a window kept in memory (about 40 bytes each) before the worker
 * asks the log for the window's repeated keys instead.  The sanitizer build
 * makes it small, so that its run of the suite takes that path everywhere.
 */
#ifndef MONK_WINDOW_KEYS
#define MONK_WINDOW_KEYS 131072
#endif

/*
 * One read of a window (a tick): the frontier moves past it once every event
 * read in it is settled (and past the window with its last slice).
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

/* The versions in memory of the keys with one hash. */
typedef struct MonkKeyEntry
{
	uint64		hash;			/* the hash table's key */
	int			busy;			/* versions handed to the sender, not settled */
	dlist_head	pending;		/* versions waiting, oldest first */
} MonkKeyEntry;

/* One event in memory, from its read until it settles. */
typedef struct MonkQueued
{
	MonkOutboxRow row;			/* key and event: this item's own copies */
	MonkSlice  *slice;
	MonkKeyEntry *entry;
	bool		parked;			/* its batch was parked once */
	dlist_node	node;			/* in the worker's pending list */
	dlist_node	enode;			/* in its entry's pending list */
} MonkQueued;

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

/* The state of one worker. */
typedef struct MonkWorker
{
	MonkWorkerSlot *slot;
	MonkSender *sender;
	MemoryContext cxt;			/* items, ticks, chunks */
	bool		ready;			/* the log's state is loaded */

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
	bool		need_read;
	uint64		read_base;		/* committed count before the last read */

	/* waiting and sending */
	HTAB	   *keys;			/* MonkKeyEntry by hash of the key */
	dlist_head	pending;		/* items read, not yet in a chunk */
	dlist_head	chunks;			/* submitted, not yet settled */
	int			nchunks;

	/* recording */
	MonkOutboxState state;
	bool		state_dirty;	/* the frontier moved since it was saved */
	TimestampTz saved_at;
	TimestampTz maintained_at;
	bool		seen_in_cur;	/* events were read from the current segment */
	dlist_head	sent;			/* MonkSentBatch to record */
	bool		dead_letters;	/* monk.dead_letter holds outbox events */
	int64	   *unpark;			/* settled ids that were parked once */
	int			nunpark;
	int			unpark_cap;
} MonkWorker;

/* What monk.status shows the worker doing. */
static inline void
MonkWorkerSetState(MonkWorker *w, MonkWorkerState state)
{
	w->slot->state = state;
}

/* How many events make a batch (monk.batch_size may change on reload). */
static inline int
MonkBatchTarget(void)
{
	return monk_batch_size;
}

/* pipeline.c */
extern const MonkSenderOps MonkPipelineOps;
extern void MonkPipelineInit(MonkWorker *w);
extern void MonkPipelineLoad(MonkWorker *w);
extern void MonkPipelineResume(MonkWorker *w);
extern bool MonkPipelineRead(MonkWorker *w, int want);
extern int	MonkPipelineCountSendable(MonkWorker *w, TimestampTz *oldest);
extern void MonkPipelineSubmit(MonkWorker *w);
extern void MonkPipelineRecord(MonkWorker *w, bool force);
extern bool MonkPipelineSegmentsPending(MonkWorker *w);

#endif
