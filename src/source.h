/*
 * source.h
 *		The sources of monk_batch_export and monk_verify_export: checking one,
 *		the query that reads it and its cursor, its rows as events, names and
 *		default keys.
 */
#ifndef MONK_SOURCE_H
#define MONK_SOURCE_H

#include "access/htup.h"
#include "access/tupdesc.h"
#include "utils/portal.h"

#include "event.h"

/* Columns of a source, by name, in the order MonkSourceQuery selects them. */
typedef enum MonkSourceColumn
{
	MONK_SOURCE_ID = 0,
	MONK_SOURCE_EVENT_NAME,
	MONK_SOURCE_EXTERNAL_ID,
	MONK_SOURCE_CUSTOMER_ID,
	MONK_SOURCE_TIMESTAMP,
	MONK_SOURCE_PROPERTIES,
	MONK_SOURCE_KEY,
	MONK_SOURCE_NCOLUMNS
} MonkSourceColumn;

/* A row of a source, read as an event. */
typedef struct MonkSourceRow
{
	int64		id;
	MonkEvent	ev;
	char	   *customer_text;	/* customer_id as the source holds it */
	const char *key;			/* the row's own key, or the default */
	char	   *json;			/* an invalid row as JSON, for its dead letter */
} MonkSourceRow;

extern Oid	MonkCheckSource(Oid source);
extern char *MonkSourceQuery(Oid relid, bool from_start, bool with_pending, int *positions);
extern Portal MonkSourceOpen(const char *query, int64 after, const int64 *pending, int npending);
extern void MonkSourceCheckNullIds(Oid relid);
extern bool MonkSourceRowRead(HeapTuple tuple, TupleDesc desc, TimestampTz now,
							  const char *prefix, MonkSourceRow *row, MonkEventError *err);
extern char *MonkSourceName(Oid relid);

#endif
