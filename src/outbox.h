/*
 * outbox.h
 *		Access to monk's tables: the outbox, the dead letters and the export
 *		cursors.
 */
#ifndef MONK_OUTBOX_H
#define MONK_OUTBOX_H

#include "datatype/timestamp.h"
#include "storage/itemptr.h"

extern int64 OutboxNextId(void);
extern void OutboxInsert(int64 id, const char *key, const char *event, int event_len,
						 TimestampTz queued_at);
extern void OutboxCheckCapacity(void);

#endif

/* The worker's side: short transactions around SPI. */
typedef void (*OutboxRowCallback) (void *arg, int64 id, ItemPointer tid, const char *event,
								   int len, TimestampTz queued_at);

extern void OutboxBegin(const char *activity);
extern void OutboxCommit(void);
extern bool OutboxExists(void);
extern int	OutboxRead(int64 after, int64 before, int limit, OutboxRowCallback cb, void *arg);
extern void OutboxDelete(const int64 *ids, int n);
extern void OutboxDeleteByTid(const ItemPointerData *tids, const int64 *ids, int n);
extern void OutboxDeadLetter(int64 id, long status, const char *error, const char *response,
							 int attempts);
extern void OutboxPark(const int64 *ids, int n, int attempts, long status, const char *error,
					   TimestampTz next_attempt_at);
extern void OutboxNotify(const char *payload);
