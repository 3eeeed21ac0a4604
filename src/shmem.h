/*
 * shmem.h
 *		State shared between the monk workers and the backends: one slot per
 *		database of monk.databases, holding the worker's latch and the live
 *		figures behind monk.status.
 */
#ifndef MONK_SHMEM_H
#define MONK_SHMEM_H

#include "datatype/timestamp.h"
#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/spin.h"

#define MONK_MAX_DATABASES 64
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
	MONK_STATE_STOPPING
} MonkWorkerState;

typedef enum MonkCircuitState
{
	MONK_CIRCUIT_CLOSED = 0,
	MONK_CIRCUIT_OPEN,
	MONK_CIRCUIT_HALF_OPEN
} MonkCircuitState;

/* Counters behind monk.status, bumped by the worker. */
typedef enum MonkCounter
{
	MONK_EVENTS_SENT = 0,
	MONK_EVENTS_FAILED,			/* dead-lettered */
	MONK_EVENTS_RETRIED,		/* events in requests that will be retried */
	MONK_REQUESTS_2XX,
	MONK_REQUESTS_4XX,
	MONK_REQUESTS_5XX,
	MONK_REQUESTS_FAILED,		/* no HTTP answer: timeout, connection error */
	MONK_NUM_COUNTERS
} MonkCounter;

typedef struct MonkWorkerSlot
{
	char		dbname[NAMEDATALEN];	/* set at startup, never changes */
	Oid			dboid;			/* set by the worker once connected */
	int			pid;			/* 0 when no worker runs */
	Latch	   *latch;			/* the worker's latch, NULL when none runs */
	int			state;			/* MonkWorkerState */
	int			circuit;		/* MonkCircuitState */
	pg_atomic_uint64 counters[MONK_NUM_COUNTERS];
	pg_atomic_uint64 committed;	/* events committed into the outbox (about) */
	pg_atomic_uint64 wake_at;	/* wake the worker once committed reaches this */
	pg_atomic_uint32 segment;	/* where new events go; >= MONK_SEGMENTS: ask the table */
	pg_atomic_uint64 settled;	/* events settled since the worker started */
	int64		depth_base;		/* queued at the worker's start less committed then */
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
extern void MonkWakeWorkerAtCommit(int nevents);
extern void MonkSlotWakeAt(MonkWorkerSlot *slot, uint64 wake_at);
extern int64 MonkSlotDepth(MonkWorkerSlot *slot);
extern void MonkSlotSetError(MonkWorkerSlot *slot, const char *msg);
extern void MonkSlotSetSuccess(MonkWorkerSlot *slot);
extern const char *MonkStateName(int state);
extern const char *MonkCircuitName(int circuit);

#endif
