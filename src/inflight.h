/*
 * inflight.h
 *		Rows of an export's source that its snapshot does not see yet: the
 *		way monk_batch_export finds the rows committed late below its cursor.
 *
 * An export reads the rows past its cursor in id order, under one snapshot.
 * A row whose transaction was in progress then (two sessions inserting into a
 * bigserial table: the second may commit first), or that committed while the
 * export ran, is not seen, and the cursor moves past its id.  A dirty
 * snapshot sees such rows, uncommitted ones included: for each range of ids
 * the export read, their ids are found through a btree index whose first
 * column is id, and kept in the cursor (monk.sync_state.pending_ids) for the
 * next run to read again.  A view, or a table without such an index, finds
 * none (README: Export and Verifying an export).
 */
#ifndef MONK_INFLIGHT_H
#define MONK_INFLIGHT_H

typedef struct MonkInFlight MonkInFlight;

extern MonkInFlight *MonkInFlightCreate(Oid source);
extern void MonkInFlightFind(MonkInFlight *inf, bool has_lo, int64 lo, int64 hi,
							 const int64 *seen, int nseen, int64 **ids, int *nids, int *cap);
extern int	MonkCompareIds(const void *a, const void *b);
extern bool MonkInFlightExists(MonkInFlight *inf, int64 id, bool unseen_only);

#endif
