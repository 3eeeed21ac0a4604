/*
 * outbox.h
 *		monk's outbox, a log of segments: queueing into it (backends,
 *		outbox.c) and consuming it (the worker, outbox_consumer.c).
 */
#ifndef MONK_OUTBOX_H
#define MONK_OUTBOX_H

#include "access/xlogdefs.h"
#include "datatype/timestamp.h"
#include "executor/spi.h"
#include "storage/itemptr.h"

/* Segments of the log: monk.log_0 .. monk.log_3. */
#define MONK_SEGMENTS 4

/*
 * What an outbox key assigned by default has between the prefix and the id,
 * so that it never equals an exported row's default key (prefix and id).
 */
#define MONK_OUTBOX_KEY_INFIX "outbox_"

/* The backends' side (outbox.c): queueing in the caller's transaction. */
extern int64 MonkOutboxNextId(void);
extern void MonkOutboxInsert(int64 id, const char *key, const char *event, int event_len,
							 TimestampTz queued_at);
extern void MonkOutboxCheckCapacity(void);
extern Oid	MonkOutboxSegmentOid(int segment);

/* Several events at once: the segment and its indexes opened once. */
typedef struct MonkOutboxAppender MonkOutboxAppender;
extern MonkOutboxAppender *MonkOutboxAppendBegin(bool bulk);
extern void MonkOutboxAppend(MonkOutboxAppender *ap, int64 id, const char *key, int key_len,
							 const char *event, int event_len, TimestampTz queued_at);
extern void MonkOutboxAppendEnd(MonkOutboxAppender *ap);

/* A snapshot with full (64-bit) transaction ids; xip sorted. */
typedef struct MonkOutboxSnapshot
{
	uint64		xmin;
	uint64		xmax;
	int			nxip;
	uint64	   *xip;
} MonkOutboxSnapshot;

/* One event as read from the log (pointers valid during the callback). */
typedef struct MonkOutboxRow
{
	int			segment;
	uint64		txid;
	int64		id;
	const char *key;
	int			key_len;
	const char *event;
	int			event_len;
	TimestampTz queued_at;
	int64		newest_id;		/* with the window's repeated keys: the id of
								 * its key's newest version in the window (-1:
								 * one version) */
} MonkOutboxRow;

/* Takes one row; false: not taken, stop the read before it. */
typedef bool (*MonkOutboxRowCallback) (void *arg, const MonkOutboxRow *row);

typedef struct MonkOutboxSegment
{
	TimestampTz rotated_at;		/* when it last became current (0: never) */
	TimestampTz settled_at;		/* when found fully settled (0: not yet) */
	TimestampTz truncated_at;	/* when last truncated (0: never) */
} MonkOutboxSegment;

/* What monk.queue_state and monk.segment hold. */
typedef struct MonkOutboxState
{
	MonkOutboxSnapshot frontier;	/* every event visible in it is settled */
	bool		in_window;		/* and so are, among the events visible in */
	MonkOutboxSnapshot window;	/* window but not in frontier, those up to */
	uint64		pos_txid;		/* (pos_txid, pos_id) */
	int64		pos_id;
	int			cur_segment;
	ItemPointerData ctid;		/* where monk.queue_state's row was last seen */
	MonkOutboxSegment segments[MONK_SEGMENTS];
} MonkOutboxState;

typedef enum MonkOutboxSchema
{
	MONK_OUTBOX_NONE,			/* no CREATE EXTENSION monk here */
	MONK_OUTBOX_LEGACY,			/* 0.1's table: ALTER EXTENSION UPDATE due */
	MONK_OUTBOX_LOG
} MonkOutboxSchema;

/* The worker's side (outbox_consumer.c), in MonkXactBegin's transactions. */
extern MonkOutboxSchema MonkOutboxFindSchema(void);
extern XLogRecPtr MonkOutboxTakeSnapshot(MonkOutboxSnapshot *snap, MemoryContext cxt);
extern bool MonkOutboxSnapshotSees(const MonkOutboxSnapshot *snap, uint64 txid);
extern int	MonkOutboxReadTxid(uint64 txid, int64 after_id, int limit, bool with_keys, int64 *budget,
							   bool *cut, MonkOutboxRowCallback cb, void *arg);
extern int	MonkOutboxReadRange(uint64 from, uint64 to, uint64 after_txid, int64 after_id,
								const uint64 *exclude, int nexclude, int limit, bool with_keys,
								int64 *budget, bool *cut, MonkOutboxRowCallback cb, void *arg);
extern void MonkOutboxLoadState(MonkOutboxState *state, MemoryContext cxt);
extern void MonkOutboxSaveState(MonkOutboxState *state);
extern int64 MonkOutboxCountUnsettled(const MonkOutboxSnapshot *frontier);
extern void MonkOutboxRotate(MonkOutboxState *state, int segment);
extern bool MonkOutboxTryTruncate(MonkOutboxState *state, int segment, int retention_s);
extern void MonkOutboxPark(const int64 *ids, int n, int attempts, long status, const char *error,
						   TimestampTz next_attempt_at);
extern void MonkOutboxUnpark(const int64 *ids, int n);
extern void MonkOutboxRecordSent(int segment, const uint64 *txids, const int64 *ids, int n,
								 long status, int attempts);
extern void MonkOutboxLoadRepeatedKeys(uint64 from, uint64 to, const uint64 *exclude, int nexclude,
									   const uint64 *late, int nlate);
extern void MonkOutboxNotify(const char *payload);

#endif
