/*
 * shmem.c
 *		Shared memory of monk: a slot per exported database with the worker's
 *		latch and its live figures, and the wake-up of the worker when a
 *		transaction that queued events commits.
 *
 * Backends never poll: monk_send counts the events of the transaction, and
 * an XactCallback adds them to the database's committed counter once the
 * transaction has committed (after it became visible).  The worker says from
 * which count on it wants to be woken -- the next event when it is idle,
 * enough events to fill its batch while one waits for monk.flush_interval,
 * none while all its requests are busy -- and the commit that reaches that
 * count sets its latch, once.  A rolled-back transaction wakes nobody; a
 * busy stream of commits costs the worker one wake-up per batch, not one per
 * commit.
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "settings.h"
#include "http.h"
#include "progress.h"
#include "shmem.h"

MonkShared *MonkShmem = NULL;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;
static int64 events_in_xact = 0;	/* events queued by this transaction */

/* wake the worker at commit, whatever the count */
static bool wake_at_commit = false;
static bool xact_callback_registered = false;

/*
 * Events queued in subtransactions still open or committed into an open
 * parent: (subtransaction, count), innermost last.  A rolled-back
 * subtransaction takes its events (and its committed children's) back out
 * of events_in_xact.  Kept only while events are queued in subtransactions.
 */
typedef struct SubXactEvents
{
	SubTransactionId subid;
	int64		nevents;
} SubXactEvents;

static SubXactEvents *subxact_events = NULL;
static int	nsubxact_events = 0;
static int	subxact_events_cap = 0;

static Size
MonkShmemSize(void)
{
	return add_size(offsetof(MonkShared, slots),
					mul_size(sizeof(MonkWorkerSlot), MONK_MAX_DATABASES));
}

static void
MonkShmemRequest(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(add_size(MonkShmemSize(), MonkProgressShmemSize()));
}

/* Create (or attach to) the shared state: one slot per monk.databases entry. */
static void
MonkShmemStartup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	MonkShmem = ShmemInitStruct("monk", MonkShmemSize(), &found);
	if (!found)
	{
		memset(MonkShmem, 0, MonkShmemSize());
		MonkShmem->nslots = MONK_MAX_DATABASES;
		for (int i = 0; i < MONK_MAX_DATABASES; i++)
		{
			MonkWorkerSlot *slot = &MonkShmem->slots[i];

			SpinLockInit(&slot->mutex);
			for (int c = 0; c < MONK_NUM_COUNTERS; c++)
				pg_atomic_init_u64(&slot->counters[c], 0);
			pg_atomic_init_u64(&slot->committed, 0);
			pg_atomic_init_u64(&slot->wake_at, 0);
			pg_atomic_init_u32(&slot->segment, PG_UINT32_MAX);
			pg_atomic_init_u64(&slot->settled, 0);
		}
	}
	MonkProgressShmemAttach();
	LWLockRelease(AddinShmemInitLock);
}

/*
 * Give a free slot to database name (the launcher, its only writer of
 * names): its counters start at zero.  Returns its number, or -1 when all
 * are taken.
 */
int
MonkSlotClaim(const char *name)
{
	for (int i = 0; i < MONK_MAX_DATABASES; i++)
	{
		MonkWorkerSlot *slot = &MonkShmem->slots[i];
		bool		free;

		SpinLockAcquire(&slot->mutex);
		free = slot->dbname[0] == '\0' && slot->pid == 0;
		if (free)
		{
			strlcpy(slot->dbname, name, NAMEDATALEN);
			slot->dboid = InvalidOid;
			slot->latch = NULL;
			slot->state = 0;
			slot->circuit = 0;
			slot->depth_base = 0;
			slot->depth_known = false;
			slot->started_at = 0;
			slot->last_success_at = 0;
			slot->last_error_at = 0;
			slot->last_error[0] = '\0';
		}
		SpinLockRelease(&slot->mutex);
		if (free)
		{
			for (int c = 0; c < MONK_NUM_COUNTERS; c++)
				pg_atomic_write_u64(&slot->counters[c], 0);
			pg_atomic_write_u64(&slot->committed, 0);
			pg_atomic_write_u64(&slot->wake_at, 0);
			pg_atomic_write_u32(&slot->segment, PG_UINT32_MAX);
			pg_atomic_write_u64(&slot->settled, 0);
			return i;
		}
	}
	return -1;
}

/* A worker leaves its slot: its database is no longer listed. */
void
MonkSlotRelease(MonkWorkerSlot *slot)
{
	SpinLockAcquire(&slot->mutex);
	slot->dbname[0] = '\0';
	slot->dboid = InvalidOid;
	SpinLockRelease(&slot->mutex);
}

/* Called from _PG_init while shared_preload_libraries are loaded. */
void
MonkShmemInit(void)
{
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = MonkShmemRequest;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = MonkShmemStartup;
}

/* Raise a clear error when the library was not preloaded. */
void
MonkRequirePreload(void)
{
	if (MonkShmem == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("monk must be loaded via shared_preload_libraries"),
				 errhint("Add monk to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* The slot of the worker exporting the given database, or NULL. */
MonkWorkerSlot *
MonkSlotForDatabase(Oid dboid)
{
	if (MonkShmem == NULL)
		return NULL;
	for (int i = 0; i < MonkShmem->nslots; i++)
	{
		if (MonkShmem->slots[i].dboid == dboid)
			return &MonkShmem->slots[i];
	}
	return NULL;
}

static void
MonkXactCallback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
			if (events_in_xact > 0 || wake_at_commit)
			{
				MonkWorkerSlot *slot = MonkSlotForDatabase(MyDatabaseId);

				if (slot)
				{
					uint64		committed = pg_atomic_add_fetch_u64(&slot->committed, events_in_xact);
					uint64		mark = pg_atomic_read_u64(&slot->wake_at);

					/*
					 * The first commit to reach the mark disarms it and wakes
					 * the worker; a compare-and-exchange, so that a mark the
					 * worker has just re-armed is never overwritten.
					 */
					while (wake_at_commit || committed >= mark)
					{
						if (pg_atomic_compare_exchange_u64(&slot->wake_at, &mark, PG_UINT64_MAX))
						{
							Latch	   *latch = slot->latch;

							if (latch)
								SetLatch(latch);
							break;
						}
					}
				}
			}
			events_in_xact = 0;
			wake_at_commit = false;
			nsubxact_events = 0;
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:

			/* a prepared transaction's events: the worker's 2PC timer */
			events_in_xact = 0;
			wake_at_commit = false;
			nsubxact_events = 0;
			break;
		default:
			break;
	}
}

/*
 * A subtransaction ends: a rolled-back one's events are not queued (nor
 * those of its children, committed into it); a committed one's now belong
 * to its parent.
 */
static void
MonkSubXactCallback(SubXactEvent event, SubTransactionId mySubid, SubTransactionId parentSubid, void *arg)
{
	if (nsubxact_events == 0 ||
		(event != SUBXACT_EVENT_ABORT_SUB && event != SUBXACT_EVENT_COMMIT_SUB))
		return;
	while (nsubxact_events > 0 && subxact_events[nsubxact_events - 1].subid >= mySubid)
	{
		SubXactEvents *top = &subxact_events[--nsubxact_events];

		if (event == SUBXACT_EVENT_ABORT_SUB)
			events_in_xact -= top->nevents;
		else if (parentSubid != TopSubTransactionId)
		{
			/* into the parent's entry (the last one, if it is the parent's) */
			if (nsubxact_events > 0 && subxact_events[nsubxact_events - 1].subid == parentSubid)
				subxact_events[nsubxact_events - 1].nevents += top->nevents;
			else
				subxact_events[nsubxact_events++] = (SubXactEvents)
			{
				parentSubid, top->nevents
			};
			break;
		}
	}
}

/* Note nevents queued in the current subtransaction. */
static void
CountInSubXact(int nevents)
{
	SubTransactionId subid = GetCurrentSubTransactionId();

	if (subid == TopSubTransactionId)
		return;
	if (nsubxact_events > 0 && subxact_events[nsubxact_events - 1].subid == subid)
	{
		subxact_events[nsubxact_events - 1].nevents += nevents;
		return;
	}
	if (nsubxact_events == subxact_events_cap)
	{
		subxact_events_cap = Max(16, subxact_events_cap * 2);
		subxact_events = subxact_events
			? repalloc(subxact_events, sizeof(SubXactEvents) * subxact_events_cap)
			: MemoryContextAlloc(TopMemoryContext, sizeof(SubXactEvents) * subxact_events_cap);
	}
	subxact_events[nsubxact_events++] = (SubXactEvents)
	{
		subid, nevents
	};
}

/*
 * Count nevents queued by the current transaction for its commit (less
 * those of subtransactions rolled back); 0 asks for a wake-up at commit
 * whatever the worker's mark.
 */
void
MonkWakeWorkerAtCommit(int nevents)
{
	if (!xact_callback_registered)
	{
		RegisterXactCallback(MonkXactCallback, NULL);
		RegisterSubXactCallback(MonkSubXactCallback, NULL);
		xact_callback_registered = true;
	}
	if (nevents == 0)
		wake_at_commit = true;
	events_in_xact += nevents;
	if (nevents > 0)
		CountInSubXact(nevents);
}

/* The worker: wake me when the committed count reaches wake_at. */
void
MonkSlotWakeAt(MonkWorkerSlot *slot, uint64 wake_at)
{
	/* a full barrier: the caller reads the committed count next */
	(void) pg_atomic_exchange_u64(&slot->wake_at, wake_at);
}

/*
 * About how many events wait in this database's outbox, from the worker's
 * figures; -1 until its worker has counted them.
 */
int64
MonkSlotDepth(MonkWorkerSlot *slot)
{
	int64		depth;

	if (!slot->depth_known)
		return -1;
	pg_read_barrier();
	depth = slot->depth_base + (int64) pg_atomic_read_u64(&slot->committed) -
		(int64) pg_atomic_read_u64(&slot->settled);
	return Max(depth, 0);
}

/* Record the last error of a worker (no secrets: callers pass plain text). */
void
MonkSlotSetError(MonkWorkerSlot *slot, const char *msg)
{
	char		clip[MONK_LAST_ERROR_LEN];

	/* valid UTF-8, cut on a character */
	(void) MonkValidUtf8(msg, strlen(msg), clip, sizeof(clip));
	SpinLockAcquire(&slot->mutex);
	strlcpy(slot->last_error, clip, MONK_LAST_ERROR_LEN);
	slot->last_error_at = GetCurrentTimestamp();
	SpinLockRelease(&slot->mutex);
}

void
MonkSlotSetSuccess(MonkWorkerSlot *slot)
{
	TimestampTz now = GetCurrentTimestamp();

	SpinLockAcquire(&slot->mutex);
	slot->last_success_at = now;
	SpinLockRelease(&slot->mutex);
}

/*
 * The worker is idle: if a request was accepted since the last failure, the
 * trouble is over, and last_error goes (last_error_at stays, and the server
 * log keeps every failure), so that a fixed key or an API back leaves no old
 * error beside an idle worker.  A worker that is still busy keeps it, even
 * between failures: a half-failing API stays visible.
 */
void
MonkSlotErrorOver(MonkWorkerSlot *slot)
{
	SpinLockAcquire(&slot->mutex);
	if (slot->last_error[0] != '\0' && slot->last_success_at > slot->last_error_at)
		slot->last_error[0] = '\0';
	SpinLockRelease(&slot->mutex);
}

const char *
MonkStateName(int state)
{
	switch (state)
	{
		case MONK_STATE_STOPPED:
			return "not running";
		case MONK_STATE_STARTING:
			return "starting";
		case MONK_STATE_IDLE:
			return "idle";
		case MONK_STATE_SENDING:
			return "sending";
		case MONK_STATE_BACKOFF:
			return "backing off";
		case MONK_STATE_CIRCUIT_OPEN:
			return "circuit open";
		case MONK_STATE_PAUSED_AUTH:
			return "paused: authentication failed";
		case MONK_STATE_PAUSED_TLS:
			return "paused: TLS certificate refused";
		case MONK_STATE_STOPPING:
			return "stopping";
		case MONK_STATE_WAITING_STANDBY:
			return "waiting for standbys";
	}
	return "unknown";
}
