/*
 * export.h
 *		monk_batch_export: ship the rows of a table or view past a cursor.
 */
#ifndef MONK_EXPORT_H
#define MONK_EXPORT_H

#include "fmgr.h"

/* Columns of an export source, by name, in the order MonkSourceQuery selects them. */
enum MonkSourceColumn
{
	COL_ID = 0,
	COL_EVENT_NAME,
	COL_EXTERNAL_ID,
	COL_CUSTOMER_ID,
	COL_TIMESTAMP,
	COL_PROPERTIES,
	COL_KEY,
	NCOLS
};

extern Oid	MonkCheckSource(Oid source);
extern char *MonkSourceQuery(Oid relid, int64 max_events, int *positions);

#endif
