/*
 * outbox.h
 *		Access to monk's outbox, a log of segments: queueing (backends), and
 *		reading windows, the frontier, segments, dead letters (the worker).
 */
#ifndef MONK_OUTBOX_H
#define MONK_OUTBOX_H

#include "datatype/timestamp.h"
#include "storage/itemptr.h"

/* Segments of the log: monk.log_0 .. monk.log_3. */
#define MONK_SEGMENTS 4

/*
 * What an outbox key assigned by default has between the prefix and the id,
 * so that it never equals an exported row's default key (prefix and id).
 */
#define MONK_OUTBOX_KEY_INFIX "outbox_"

/* The backends' side: queueing in the caller's transaction. */
extern int64 OutboxNextId(void);
extern void OutboxInsert(int64 id, const char *key, const char *event, int event_len,
						 TimestampTz queued_at);
extern void OutboxCheckCapacity(void);

/* Several events at once: the segment and its indexes opened once. */
typedef struct OutboxAppender OutboxAppender;
extern OutboxAppender *OutboxAppendBegin(bool bulk);
extern void OutboxAppend(OutboxAppender *ap, int64 id, const char *key, int key_len,
						 const char *event, int event_len, TimestampTz queued_at);
extern void OutboxAppendEnd(OutboxAppender *ap);

/* A snapshot with full (64-bit) transaction ids; xip sorted. */
typedef struct OutboxSnapshot
{
	uint64		xmin;
	uint64		xmax;
	int			nxip;
	uint64	   *xip;
} OutboxSnapshot;

/* One event as read from the log (pointers valid during the callback). */
typedef struct OutboxRow
{
	int			segment;
	uint64		txid;
	int64		id;
	const char *key;
	int			key_len;
	const char *event;
	int			event_len;
	TimestampTz queued_at;
} OutboxRow;

typedef void (*OutboxRowCallback) (void *arg, const OutboxRow *row);

typedef struct OutboxSegment
{
	TimestampTz rotated_at;		/* when it last became current (0: never) */
	TimestampTz settled_at;		/* when found fully settled (0: not yet) */
	TimestampTz truncated_at;	/* when last truncated (0: never) */
} OutboxSegment;

/* What monk.queue_state and monk.segment hold. */
typedef struct OutboxState
{
	OutboxSnapshot frontier;	/* every event visible in it is settled */
	bool		in_window;		/* and so are, among the events visible in */
	OutboxSnapshot window;		/* window but not in frontier, those up to */
	uint64		pos_txid;		/* (pos_txid, pos_id) */
	int64		pos_id;
	int			cur_segment;
	ItemPointerData ctid;		/* where monk.queue_state's row was last seen */
	OutboxSegment segments[MONK_SEGMENTS];
} OutboxState;

typedef enum OutboxSchema
{
	OUTBOX_NONE,				/* no CREATE EXTENSION monk here */
	OUTBOX_LEGACY,				/* 0.1's table: ALTER EXTENSION monk UPDATE pending */
	OUTBOX_LOG
} OutboxSchema;

/* The worker's side: short transactions around SPI. */
extern void OutboxBegin(const char *activity);
extern void OutboxCommit(void);
extern OutboxSchema OutboxFindSchema(void);
extern void OutboxTakeSnapshot(OutboxSnapshot *snap, MemoryContext cxt);
extern bool OutboxSnapshotSees(const OutboxSnapshot *snap, uint64 txid);
extern int	OutboxReadTxid(uint64 txid, int64 after_id, int limit, OutboxRowCallback cb, void *arg);
extern int	OutboxReadRange(uint64 from, uint64 to, uint64 after_txid, int64 after_id,
							const uint64 *exclude, int nexclude, int limit,
							OutboxRowCallback cb, void *arg);
extern void OutboxLoadState(OutboxState *state, MemoryContext cxt);
extern void OutboxSaveState(OutboxState *state);
extern int64 OutboxCountUnsettled(const OutboxSnapshot *frontier);
extern void OutboxRotate(OutboxState *state, int segment);
extern bool OutboxTryTruncate(OutboxState *state, int segment, int retention_s);
extern void OutboxDeadLetter(const OutboxRow *row, long status, const char *error,
							 const char *response, int attempts);
extern void OutboxPark(const int64 *ids, int n, int attempts, long status, const char *error,
					   TimestampTz next_attempt_at);
extern void OutboxUnpark(const int64 *ids, int n);
extern void OutboxRecordSent(int segment, const uint64 *txids, const int64 *ids, int n,
							 long status, int attempts);
extern void OutboxForEachAccepted(const OutboxSnapshot *frontier,
								  void (*cb) (void *arg, uint64 txid, int64 id), void *arg);
extern void OutboxNotify(const char *payload);

#endif
