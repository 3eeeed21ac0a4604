/*
 * capture_map.h
 *		The mapping of a monk_capture trigger: its arguments resolved against
 *		its table (capture_map.c), read by the trigger as it fires
 *		(capture.c).
 */
#ifndef MONK_CAPTURE_MAP_H
#define MONK_CAPTURE_MAP_H

#include "commands/trigger.h"
#include "fmgr.h"

#include "event.h"

/* How a column's value is written: fast paths, else its output function. */
typedef enum MonkCaptureKind
{
	MONK_CAPTURE_TEXT,			/* text, varchar: the bytes as they are */
	MONK_CAPTURE_INT,			/* int2, int4, int8 */
	MONK_CAPTURE_FLOAT4,
	MONK_CAPTURE_FLOAT8,
	MONK_CAPTURE_NUMERIC,
	MONK_CAPTURE_BOOL,
	MONK_CAPTURE_JSONB,
	MONK_CAPTURE_JSON,
	MONK_CAPTURE_TIMESTAMPTZ,
	MONK_CAPTURE_TIMESTAMP,
	MONK_CAPTURE_DATE,
	MONK_CAPTURE_UUID,
	MONK_CAPTURE_OTHER			/* a string: the type's output function */
} MonkCaptureKind;

/* A column of the table, resolved. */
typedef struct MonkCaptureColumn
{
	AttrNumber	attnum;			/* 0: not mapped */
	const char *name;
	Oid			type;			/* the base type (domains resolved) */
	MonkCaptureKind kind;
	FmgrInfo	out;
} MonkCaptureColumn;

/* A property: a column, or a constant string. */
typedef struct MonkCaptureProperty
{
	const char *name;
	const char *label;			/* "name": as JSON, ready to append */
	MonkCaptureColumn col;		/* attnum 0: the constant */
	const char *constant;		/* the constant as a JSON string */
} MonkCaptureProperty;

/* The mapping of one trigger: its arguments resolved against its table. */
typedef struct MonkCaptureMap
{
	Oid			tgoid;
	Oid			relid;			/* the table the trigger fires on */
	Oid			source_relid;	/* the table keys are named after */
	bool		valid;			/* cleared by a relcache invalidation */
	MemoryContext cxt;			/* holds the map and everything it points to */
	int			nargs;
	char	  **args;
	const char *relname;
	const char *event_name;
	const char *source;			/* the quoted, qualified name in keys */
	bool		legacy_keys;	/* captured under 0.3: 0.3's prefix (keys.c) */
	MonkCaptureColumn external;
	MonkCaptureColumn customer;
	MonkCaptureColumn timestamp;
	MonkCaptureColumn key;
	int			nprops;
	MonkCaptureProperty *props;
	int			npk;
	MonkCaptureColumn *pk;		/* the primary key, for the default key */
	MonkFieldNames names;		/* how validation errors name the fields */
} MonkCaptureMap;

extern PGDLLEXPORT Datum monk_capture(PG_FUNCTION_ARGS);

extern void MonkCaptureCheckForm(int16 tgtype, bool new_table, bool old_table,
								 const char *tgname);
extern MonkCaptureMap *MonkCaptureGetMap(TriggerData *td);

#endif
