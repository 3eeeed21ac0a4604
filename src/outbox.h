/*
 * outbox.h
 *		Access to monk's tables: the outbox, the dead letters and the export
 *		cursors.
 */
#ifndef MONK_OUTBOX_H
#define MONK_OUTBOX_H

#include "datatype/timestamp.h"

extern int64 OutboxNextId(void);
extern void OutboxInsert(int64 id, const char *key, const char *event, int event_len,
						 TimestampTz queued_at);
extern void OutboxCheckCapacity(int64 new_id);

#endif
