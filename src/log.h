/*
 * log.h
 *		The outbox's log as the worker reads it: the order in which it reads
 *		events, the rule that decides which version of a key wins, and the
 *		frontier behind which every event is settled.
 *
 * What the functions below keep true (the reasoning of the README's "Per-key
 * order" and "Storage of the outbox"):
 *
 * 1. Windows.  The worker reads the events that became visible between two
 *    snapshots of its own, a window: the transactions in progress at the
 *    window's start that have committed by its end (late ones, read one by
 *    one), then the transaction ids from the start's xmax to the end's, in
 *    (txid, id) order; in slices, as there is room.  Every committed event
 *    is in exactly one window, and a window is read once.
 * 2. Which version wins.  Between two versions of one key, the one of the
 *    later window wins; within a window, the one with the higher outbox id
 *    (queued later).  So a version queued after the transaction of an older
 *    one committed always wins: it cannot be in an earlier window, and in
 *    the same window its id is higher.  A version read after a newer one of
 *    its window is settled unsent, found in memory (the window's keys, up to
 *    MONK_WINDOW_KEYS) or in the log's list of the window's repeated keys
 *    (larger windows, and a window partly read before a restart):
 *    window_keys.h.
 * 3. One version in flight.  A key with a version handed to the sender and
 *    not settled is busy: a newer version waits; a waiting version that a
 *    newer one replaces is settled unsent.  So the API receives a key's
 *    versions in the order of rule 2, and a batch never holds two of them.
 * 4. Settling.  An event is settled when the API accepted it, when it was
 *    dead-lettered, or when a newer version replaced it (rules 2 and 3).
 *    Each read is a slice; a slice is settled when all its events are.
 * 5. The frontier.  The end of the last slice before the first unsettled
 *    one -- a window's end snapshot, or a (txid, id) inside a window -- is
 *    saved in monk.queue_state.  After a crash the worker reads on from
 *    there, sending everything past it again, in the same order, with the
 *    same keys (an overlapping pair, rule 2's only freedom, may then resolve
 *    the other way).
 * 6. Truncation.  A segment that is not the current one is truncated only
 *    under its lock, taken only if free (so no writer of it is left), and
 *    only if a snapshot taken under that lock shows none of its events past
 *    the frontier.
 */
#ifndef MONK_LOG_H
#define MONK_LOG_H

#include "lib/ilist.h"

#include "outbox.h"
#include "shmem.h"

/* How often segments are looked at for truncation and rotation. */
#define MONK_MAINTAIN_MS 1000

typedef struct MonkLog MonkLog;

/* One event in memory, from its read until it settles. */
typedef struct MonkQueued
{
	MonkOutboxRow row;			/* key and event: this item's own copies */
	bool		parked;			/* its batch was parked once */
	bool		not_utf8;		/* its event could not be converted to UTF-8:
								 * kept as stored, for its dead letter */
	bool		waits;			/* moved out of the reading order's memory to
								 * wait for an older version of its key */
	struct MonkSlice *slice;	/* the log's own */
	struct MonkKeyEntry *entry;
	dlist_node	node;
	dlist_node	enode;
} MonkQueued;

extern MonkLog *MonkLogCreate(MemoryContext cxt, MonkWorkerSlot *slot,
							  void (*on_maintain) (void *arg), void *arg);
extern int64 MonkLogLoad(MonkLog *log);
extern void MonkLogResume(MonkLog *log);
extern int64 MonkLogCountUnsettled(MonkLog *log);
extern bool MonkLogRead(MonkLog *log, int want, int64 budget);
extern uint64 MonkLogReadBase(MonkLog *log);
extern long MonkLogGateWaitMs(MonkLog *log);
extern int	MonkLogCountSendable(MonkLog *log, int target, TimestampTz *oldest);
extern int	MonkLogTake(MonkLog *log, int target, bool (*take) (void *arg, MonkQueued *item), void *arg);
extern int64 MonkLogPendingBytes(MonkLog *log);
extern void MonkLogNoteAccepted(MonkLog *log, MonkQueued **items, int n, long status, int attempts);
extern void MonkLogSettle(MonkLog *log, MonkQueued *item);
extern void MonkLogAdvance(MonkLog *log);
extern void MonkLogRecord(MonkLog *log, bool force);
extern bool MonkLogSegmentsPending(MonkLog *log);

#endif
