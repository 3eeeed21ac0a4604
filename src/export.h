/*
 * export.h
 *		monk_batch_export: ship the rows of a table or view past a cursor.
 */
#ifndef MONK_EXPORT_H
#define MONK_EXPORT_H

#include "fmgr.h"

extern Datum monk_batch_export(PG_FUNCTION_ARGS);

#endif
