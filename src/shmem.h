/*
 * shmem.h
 *		State shared between the monk workers and the backends: one slot per
 *		database of monk.databases, holding the worker's latch and the live
 *		figures behind monk.status.
 *
 * Access rules.  The slots are made at postmaster start (one per entry of
 * monk.databases) and never move; each has one writer of everything but
 * its counters of commits, its worker:
 *
 * - dbname is written before any process attaches and never changes.
 * - dboid, pid, latch, state and circuit are written by the worker alone
 *   and read without a lock: an aligned int or pointer is read whole, and
 *   a reader may see the value just before a change (monk.status shows a
 *   state a moment old; a backend that sets a latch the worker has just
 *   given up wakes nobody, and the worker reads the counters again when it
 *   starts).
 * - counters, settled and segment are atomics: the worker adds and writes,
 *   backends read.
 * - committed is added to by the backends (an XactCallback, after their
 *   commit is visible); wake_at is armed by the worker and disarmed by the
 *   first commit that reaches it, with a compare-and-exchange so that a mark
 *   the worker has just re-armed is never lost; the worker reads committed
 *   after arming (a full barrier), so that a commit is either seen or wakes
 *   it.
 * - depth_base is written by the worker before depth_known is set, with a
 *   write barrier between them; a backend reads depth_known, then (after a
 *   read barrier) depth_base.
 * - mutex (a spinlock) protects started_at, last_success_at, last_error_at
 *   and last_error, which are written and read together.
 */
#ifndef MONK_SHMEM_H
#define MONK_SHMEM_H

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/spin.h"

#include "delivery.h"

#define MONK_LAST_ERROR_LEN 256

typedef enum MonkWorkerState
{
	MONK_STATE_STOPPED = 0,
	MONK_STATE_STARTING,
	MONK_STATE_IDLE,
	MONK_STATE_SENDING,
	MONK_STATE_BACKOFF,
	MONK_STATE_CIRCUIT_OPEN,
	MONK_STATE_PAUSED_AUTH,
	MONK_STATE_PAUSED_TLS,
	MONK_STATE_STOPPING,
	MONK_STATE_WAITING_STANDBY	/* events wait for monk.standby_names */
} MonkWorkerState;

typedef struct MonkWorkerSlot
{
	char		dbname[NAMEDATALEN];	/* "": a free slot (launcher.c) */
	Oid			dboid;			/* set by the worker once connected */
	int			pid;			/* 0 when no worker runs */
	Latch	   *latch;			/* the worker's latch, NULL when none runs */
	int			state;			/* MonkWorkerState */
	int			circuit;		/* MonkCircuitState (delivery.h) */
	/* by MonkCounter (delivery.h) */
	pg_atomic_uint64 counters[MONK_NUM_COUNTERS];
	pg_atomic_uint64 committed; /* events committed into the outbox (about) */
	pg_atomic_uint64 wake_at;	/* wake the worker once committed reaches this */
	pg_atomic_uint32 segment;	/* where new events go (>= MONK_SEGMENTS: ask
								 * the table) */
	pg_atomic_uint64 settled;	/* events settled since the worker started */
	int64		depth_base;		/* queued at start less committed then */
	bool		depth_known;	/* depth_base is set */

	slock_t		mutex;			/* protects what follows */
	TimestampTz started_at;
	TimestampTz last_success_at;
	TimestampTz last_error_at;
	char		last_error[MONK_LAST_ERROR_LEN];
} MonkWorkerSlot;

typedef struct MonkShared
{
	int			nslots;
	MonkWorkerSlot slots[FLEXIBLE_ARRAY_MEMBER];
} MonkShared;

extern MonkShared *MonkShmem;

extern void MonkShmemInit(void);
extern void MonkRequirePreload(void);
extern MonkWorkerSlot *MonkSlotForDatabase(Oid dboid);
extern int	MonkSlotClaim(const char *name);
extern void MonkSlotRelease(MonkWorkerSlot *slot);
extern void MonkWakeWorkerAtCommit(int nevents);
extern void MonkSlotWakeAt(MonkWorkerSlot *slot, uint64 wake_at);
extern int64 MonkSlotDepth(MonkWorkerSlot *slot);
extern void MonkSlotSetError(MonkWorkerSlot *slot, const char *msg);
extern void MonkSlotSetSuccess(MonkWorkerSlot *slot);
extern void MonkSlotErrorOver(MonkWorkerSlot *slot);
extern const char *MonkStateName(int state);

#endif
