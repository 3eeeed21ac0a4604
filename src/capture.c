/*
 * capture.c
 *		monk_capture: a trigger function that turns the rows of a table into
 *		events, declared in CREATE TRIGGER's arguments instead of PL/pgSQL.
 *
 * The arguments are the event name, then options written name=value:
 * external_customer_id=<column> and/or customer_id=<column> (one required),
 * properties=<column>[,...], property.<name>=<column> (a property named
 * otherwise than its column), constant.<name>=<text>, timestamp=<column>
 * and key=<column>.  They are resolved against the table once -- column
 * numbers, how each value is written as JSON, output functions -- into a
 * mapping kept per trigger for the session and rebuilt when the table or
 * the trigger changes (a relcache invalidation).  A row becomes the event
 * monk_send would queue for it: the same validation (SQLSTATE 22023, the
 * message naming the column), the same outbox, the same wake-up at commit,
 * and the same privileges (no right on schema monk is needed to fire it).
 *
 * The default key is the prefix, the table, the row's primary key and the
 * event name: sync_public.api_calls:42:api_call (identifiers quoted as SQL
 * quotes them, ',' ':' and '\' in key values escaped with '\').  It is
 * stable for the row, differs between tables and between two triggers of
 * one table, and never equals the default key of an exported row
 * (sync_<id>) or of monk_send (sync_outbox_<id>), which hold no ':'.  The
 * table is the partitioned table for the partitions a trigger was cloned
 * to, so that a row's key does not depend on the way it was inserted.
 *
 * An UPDATE is a correction: the row's event is queued again under the
 * same key (the log sends a key's versions in order, so the newest one is
 * billed), unless the event would come out the same; an UPDATE that changes
 * the primary key is refused, since the new key would bill the row twice.
 * At statement level the transition tables are read in one pass each (old
 * rows into a hash by key, new rows streamed into the outbox).  DELETE and
 * TRUNCATE cannot be expressed to the Events API, whose events are
 * immutable: CREATE TRIGGER refuses them, and so does the function when
 * fired by a trigger created without monk loaded.
 */
#include "postgres.h"

#include <ctype.h>
#include <math.h>

#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_index.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "common/shortest_dec.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "parser/parse_func.h"
#include "utils/builtins.h"
#include "utils/date.h"
#include "utils/datetime.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/numeric.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"
#include "utils/uuid.h"

#include "capture.h"
#include "event.h"
#include "outbox.h"
#include "settings.h"
#include "shmem.h"
#include "source.h"

PG_FUNCTION_INFO_V1(monk_capture);

/* How a column's value is written: fast paths, else its output function. */
typedef enum CaptureKind
{
	KIND_TEXT,					/* text, varchar: the bytes as they are */
	KIND_INT,					/* int2, int4, int8 */
	KIND_FLOAT4,
	KIND_FLOAT8,
	KIND_NUMERIC,
	KIND_BOOL,
	KIND_JSONB,
	KIND_JSON,
	KIND_TIMESTAMPTZ,
	KIND_TIMESTAMP,
	KIND_DATE,
	KIND_UUID,
	KIND_OTHER					/* a string: the type's output function */
} CaptureKind;

/* A column of the table, resolved. */
typedef struct CaptureColumn
{
	AttrNumber	attnum;			/* 0: not mapped */
	const char *name;
	Oid			type;			/* the base type (domains resolved) */
	CaptureKind kind;
	FmgrInfo	out;
} CaptureColumn;

/* A property: a column, or a constant string. */
typedef struct CaptureProperty
{
	const char *name;
	const char *label;			/* "name": as JSON, ready to append */
	CaptureColumn col;			/* attnum 0: the constant */
	const char *constant;		/* the constant as a JSON string */
} CaptureProperty;

/* The mapping of one trigger: its arguments resolved against its table. */
typedef struct CaptureMap
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
	CaptureColumn external;
	CaptureColumn customer;
	CaptureColumn timestamp;
	CaptureColumn key;
	int			nprops;
	CaptureProperty *props;
	int			npk;
	CaptureColumn *pk;			/* the primary key, for the default key */
	MonkFieldNames names;		/* how validation errors name the fields */
} CaptureMap;

typedef struct CaptureEntry
{
	Oid			tgoid;
	CaptureMap *map;
} CaptureEntry;

/* The buffers a row is rendered into, reused from row to row. */
typedef struct RowBuffers
{
	StringInfoData key;
	StringInfoData json;
	StringInfoData customer;	/* the external customer id */
	StringInfoData props;		/* the properties object */
} RowBuffers;

/* The mappings of this session, by trigger. */
static HTAB *maps = NULL;

#define OPTIONS_HINT "The options are external_customer_id=<column>, customer_id=<column>, properties=<column>,..., property.<name>=<column>, constant.<name>=<text>, timestamp=<column> and key=<column>."

/* ------------------------------------------------------------------------
 * Resolving the arguments against the table
 * ------------------------------------------------------------------------
 */

/* s without leading and trailing white space, in a new string. */
static char *
Trimmed(const char *s, int len)
{
	while (len > 0 && isspace((unsigned char) *s))
		s++, len--;
	while (len > 0 && isspace((unsigned char) s[len - 1]))
		len--;
	return pnstrdup(s, len);
}

/* Can values of this type be written as a string, number or boolean? */
static bool
IsScalarType(Oid type)
{
	return !type_is_rowtype(type) && !OidIsValid(get_element_type(type)) &&
		get_typtype(type) != TYPTYPE_PSEUDO;
}

/* How values of a (base) type are written. */
static CaptureKind
KindOf(Oid type)
{
	switch (type)
	{
		case TEXTOID:
		case VARCHAROID:
			return KIND_TEXT;
		case INT2OID:
		case INT4OID:
		case INT8OID:
			return KIND_INT;
		case FLOAT4OID:
			return KIND_FLOAT4;
		case FLOAT8OID:
			return KIND_FLOAT8;
		case NUMERICOID:
			return KIND_NUMERIC;
		case BOOLOID:
			return KIND_BOOL;
		case JSONBOID:
			return KIND_JSONB;
		case JSONOID:
			return KIND_JSON;
		case TIMESTAMPTZOID:
			return KIND_TIMESTAMPTZ;
		case TIMESTAMPOID:
			return KIND_TIMESTAMP;
		case DATEOID:
			return KIND_DATE;
		case UUIDOID:
			return KIND_UUID;
		default:
			return KIND_OTHER;
	}
}

/* Resolve a column by its exact name (42703 when there is none). */
static void
ResolveColumn(CaptureMap *map, TupleDesc desc, const char *name, const char *option,
			  CaptureColumn *col)
{
	const char *near = NULL;
	Oid			outfn;
	bool		varlena;

	if (name[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option %s of monk_capture names no column", option),
				 errhint(OPTIONS_HINT)));
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (att->attisdropped)
			continue;
		if (strcmp(NameStr(att->attname), name) == 0)
		{
			col->attnum = att->attnum;
			break;
		}
		if (pg_strcasecmp(NameStr(att->attname), name) == 0)
			near = NameStr(att->attname);
	}
	if (col->attnum == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist", name, map->relname),
				 errdetail("monk_capture's option %s names it.", option),
				 near ? errhint("Column names are matched exactly: \"%s\"?", near) : 0));

	col->name = pstrdup(name);
	col->type = getBaseType(TupleDescAttr(desc, col->attnum - 1)->atttypid);
	if (!IsScalarType(col->type))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" of type %s cannot be mapped by monk_capture's option %s",
						name, format_type_be(col->type), option),
				 errdetail("Event fields and properties are strings, numbers or booleans."),
				 errhint("Map a column of a scalar type, for example a generated column.")));
	getTypeOutputInfo(col->type, &outfn, &varlena);
	fmgr_info_cxt(outfn, &col->out, map->cxt);
	col->kind = KindOf(col->type);
}

/* A column mapped to one of the event's fields (each at most once). */
static void
MapField(CaptureMap *map, TupleDesc desc, const char *option, const char *value,
		 CaptureColumn *col)
{
	if (col->attnum != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option %s of monk_capture is given twice", option)));
	ResolveColumn(map, desc, value, option, col);
}

/* Add a property, from a column (column != NULL) or a constant. */
static void
AddProperty(CaptureMap *map, TupleDesc desc, const char *name, const char *column,
			const char *constant, const char *option)
{
	CaptureProperty *prop;
	StringInfoData label;

	if (name[0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option %s of monk_capture names no property", option),
				 errhint(OPTIONS_HINT)));
	for (int i = 0; i < map->nprops; i++)
		if (strcmp(map->props[i].name, name) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("property \"%s\" is mapped twice in monk_capture's options", name)));
	map->props = map->nprops == 0 ? palloc0(sizeof(CaptureProperty))
		: repalloc(map->props, sizeof(CaptureProperty) * (map->nprops + 1));
	prop = &map->props[map->nprops++];
	memset(prop, 0, sizeof(*prop));
	prop->name = pstrdup(name);
	initStringInfo(&label);
	MonkEscapeJson(&label, name, strlen(name));
	appendStringInfoChar(&label, ':');
	prop->label = label.data;
	if (column)
		ResolveColumn(map, desc, column, option, &prop->col);
	else
	{
		StringInfoData json;

		initStringInfo(&json);
		MonkEscapeJson(&json, constant, strlen(constant));
		prop->constant = json.data;
	}
}

/* properties=<column>,<column>,... */
static void
AddProperties(CaptureMap *map, TupleDesc desc, const char *list)
{
	const char *p = list;

	for (;;)
	{
		const char *comma = strchr(p, ',');
		int			len = comma ? comma - p : strlen(p);
		char	   *column = Trimmed(p, len);

		AddProperty(map, desc, column, column, NULL, "properties");
		if (comma == NULL)
			break;
		p = comma + 1;
	}
}

/* One name=value argument. */
static void
ParseOption(CaptureMap *map, TupleDesc desc, const char *arg)
{
	const char *eq = strchr(arg, '=');
	char	   *name;
	char	   *value;

	if (eq == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid monk_capture option \"%s\"", arg),
				 errdetail("Options are written name=value; only the first argument, the event name, is not."),
				 errhint(OPTIONS_HINT)));
	name = Trimmed(arg, eq - arg);
	value = Trimmed(eq + 1, strlen(eq + 1));

	if (strcmp(name, "external_customer_id") == 0)
		MapField(map, desc, name, value, &map->external);
	else if (strcmp(name, "customer_id") == 0)
		MapField(map, desc, name, value, &map->customer);
	else if (strcmp(name, "timestamp") == 0)
		MapField(map, desc, name, value, &map->timestamp);
	else if (strcmp(name, "key") == 0)
		MapField(map, desc, name, value, &map->key);
	else if (strcmp(name, "properties") == 0)
		AddProperties(map, desc, value);
	else if (strncmp(name, "property.", 9) == 0)
		AddProperty(map, desc, name + 9, value, NULL, name);
	else if (strncmp(name, "constant.", 9) == 0)
		AddProperty(map, desc, name + 9, NULL, value, name);
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown monk_capture option \"%s\"", name),
				 errhint(OPTIONS_HINT)));
}

/* Check the types of the event's fields. */
static void
CheckFieldTypes(const CaptureMap *map)
{
	if (map->customer.attnum && map->customer.kind != KIND_UUID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" mapped to customer_id is of type %s, not uuid",
						map->customer.name, format_type_be(map->customer.type)),
				 errhint("customer_id is Monk's customer UUID; map your own identifier of the customer with external_customer_id=.")));
	if (map->timestamp.attnum && map->timestamp.kind != KIND_TIMESTAMPTZ &&
		map->timestamp.kind != KIND_TIMESTAMP && map->timestamp.kind != KIND_DATE)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" mapped to timestamp is of type %s",
						map->timestamp.name, format_type_be(map->timestamp.type)),
				 errhint("Map a column of type timestamptz (or timestamp or date, read in the session's time zone).")));
	if (map->external.attnum == 0 && map->customer.attnum == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("monk_capture needs external_customer_id=<column> or customer_id=<column>"),
				 errdetail("Every event names the customer it bills."),
				 errhint("For example: EXECUTE FUNCTION monk_capture('api_call', 'external_customer_id=customer').")));
}

/* The primary key's columns, for the default key (or an error without one). */
static void
ResolvePrimaryKey(CaptureMap *map, Relation rel)
{
	Oid			pkindex = MonkPrimaryKeyIndex(rel);
	HeapTuple	tuple;
	Form_pg_index index;

	if (!OidIsValid(pkindex))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" has no primary key for monk_capture's default key", map->relname),
				 errdetail("Each event's idempotency key is derived from its row's primary key unless key=<column> is given."),
				 errhint("Add a primary key, or pass 'key=<column>' naming a column that identifies the event.")));
	tuple = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(pkindex));
	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for index %u", pkindex);
	index = (Form_pg_index) GETSTRUCT(tuple);
	map->npk = index->indnkeyatts;
	map->pk = palloc0(sizeof(CaptureColumn) * map->npk);
	for (int i = 0; i < map->npk; i++)
	{
		AttrNumber	attnum = index->indkey.values[i];

		ResolveColumn(map, RelationGetDescr(rel),
					  NameStr(TupleDescAttr(RelationGetDescr(rel), attnum - 1)->attname),
					  "primary key", &map->pk[i]);
	}
	ReleaseSysCache(tuple);
}

/* How validation errors name a field: its column, or the field. */
static const char *
FieldName(const CaptureColumn *col, const char *field)
{
	return col->attnum ? psprintf("column \"%s\"", col->name) : field;
}

/*
 * Resolve a trigger's arguments against its table.  "source" is the table
 * keys are named after.  The map lives in a memory context of its own,
 * made under the current one.
 */
static CaptureMap *
BuildMap(Relation rel, Oid source, int nargs, char **args)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "monk_capture mapping",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	CaptureMap *map = palloc0(sizeof(CaptureMap));
	TupleDesc	desc = RelationGetDescr(rel);

	map->cxt = cxt;
	map->relid = RelationGetRelid(rel);
	map->source_relid = source;
	map->relname = pstrdup(RelationGetRelationName(rel));
	map->source = MonkSourceName(source);
	map->nargs = nargs;
	map->args = palloc(sizeof(char *) * Max(nargs, 1));
	for (int i = 0; i < nargs; i++)
		map->args[i] = pstrdup(args[i]);

	if (nargs == 0 || args[0][0] == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("monk_capture needs the event name as its first argument"),
				 errhint("For example: EXECUTE FUNCTION monk_capture('api_call', 'external_customer_id=customer').")));
	if (strchr(args[0], '=') != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the first argument of monk_capture, \"%s\", is an option, not an event name", args[0]),
				 errhint("Give the event name first: monk_capture('api_call', 'external_customer_id=customer', ...).")));
	map->event_name = map->args[0];
	for (int i = 1; i < nargs; i++)
		ParseOption(map, desc, args[i]);
	CheckFieldTypes(map);
	if (map->key.attnum == 0)
		ResolvePrimaryKey(map, rel);

	map->names.event_name = "the event name";
	map->names.external_customer_id = FieldName(&map->external, "external_customer_id");
	map->names.customer_id = FieldName(&map->customer, "customer_id");
	map->names.timestamp = FieldName(&map->timestamp, "timestamp");
	map->names.idempotency_key = FieldName(&map->key, "the key");
	MemoryContextSwitchTo(old);
	return map;
}

/*
 * The table keys are named after: for a trigger cloned onto a partition,
 * the partitioned table at the top, whether the row was inserted through it
 * or into the partition.
 */
static Oid
SourceRelation(Relation rel, bool cloned)
{
	if (cloned && rel->rd_rel->relispartition)
		return llast_oid(get_partition_ancestors(RelationGetRelid(rel)));
	return RelationGetRelid(rel);
}

/* ------------------------------------------------------------------------
 * The form of the trigger
 * ------------------------------------------------------------------------
 */

/* Refuse the trigger forms monk_capture cannot serve. */
static void
CheckForm(int16 tgtype, bool new_table, bool old_table, const char *tgname)
{
	if (TRIGGER_FOR_DELETE(tgtype) || TRIGGER_FOR_TRUNCATE(tgtype))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("monk_capture cannot capture %s",
						TRIGGER_FOR_DELETE(tgtype) ? "DELETE" : "TRUNCATE"),
				 errdetail("Events sent to the Events API are immutable: removing a row cannot take its event back."),
				 errhint("Fire trigger \"%s\" AFTER INSERT or UPDATE only. To correct an event, update its row: the event is sent again under the same key.",
						 tgname)));
	if (!TRIGGER_FOR_AFTER(tgtype))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("monk_capture must be fired AFTER INSERT or UPDATE"),
				 errdetail("%s trigger sees rows that may still change or never be written.",
						   TRIGGER_FOR_BEFORE(tgtype) ? "A BEFORE" : "An INSTEAD OF"),
				 errhint("Declare trigger \"%s\" AFTER INSERT OR UPDATE.", tgname)));
	if (TRIGGER_FOR_ROW(tgtype))
		return;
	if (!new_table)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("monk_capture at statement level needs the new rows as a transition table"),
				 errhint("Declare trigger \"%s\" with REFERENCING NEW TABLE AS new_rows (and OLD TABLE AS old_rows for UPDATE), one trigger per event, or FOR EACH ROW.",
						 tgname)));
	if (TRIGGER_FOR_UPDATE(tgtype) && !old_table)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_OBJECT_DEFINITION),
				 errmsg("monk_capture at statement level for UPDATE needs the old rows as a transition table"),
				 errdetail("The old rows tell which updates change an event."),
				 errhint("Declare trigger \"%s\" with REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows.",
						 tgname)));
}

/* Is this function monk_capture? */
static bool
IsMonkCapture(Oid funcoid)
{
	HeapTuple	tuple = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcoid));
	bool		c_language;
	FmgrInfo	info;

	if (!HeapTupleIsValid(tuple))
		return false;
	c_language = ((Form_pg_proc) GETSTRUCT(tuple))->prolang == ClanguageId;
	ReleaseSysCache(tuple);
	if (!c_language)
		return false;
	fmgr_info(funcoid, &info);
	return info.fn_addr == monk_capture;
}

/*
 * CREATE TRIGGER ... EXECUTE FUNCTION monk_capture(...) just ran (from the
 * ProcessUtility hook, in its transaction): check its form and resolve its
 * arguments, so that a mistake is an error now rather than at the first row.
 */
void
MonkCaptureCheckCreate(CreateTrigStmt *stmt)
{
	Oid			funcoid = LookupFuncName(stmt->funcname, 0, NULL, true);
	int16		tgtype;
	bool		new_table = false;
	bool		old_table = false;
	ListCell   *lc;
	Relation	rel;
	char	  **args;
	int			nargs = 0;
	CaptureMap *map;

	if (!OidIsValid(funcoid) || !IsMonkCapture(funcoid))
		return;
	TRIGGER_CLEAR_TYPE(tgtype);
	if (stmt->row)
		TRIGGER_SETT_ROW(tgtype);
	tgtype |= stmt->timing | stmt->events;
	foreach(lc, stmt->transitionRels)
	{
		TriggerTransition *tt = lfirst_node(TriggerTransition, lc);

		if (tt->isNew)
			new_table = true;
		else
			old_table = true;
	}
	CheckForm(tgtype, new_table, old_table, stmt->trigname);

	args = palloc(sizeof(char *) * Max(list_length(stmt->args), 1));
	foreach(lc, stmt->args)
		args[nargs++] = strVal(lfirst(lc));
	rel = relation_open(RangeVarGetRelid(stmt->relation, NoLock, false), AccessShareLock);
	map = BuildMap(rel, RelationGetRelid(rel), nargs, args);
	MemoryContextDelete(map->cxt);
	relation_close(rel, AccessShareLock);
}

/* ------------------------------------------------------------------------
 * The mappings of the session
 * ------------------------------------------------------------------------
 */

static void
InvalidateMaps(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	CaptureEntry *entry;

	hash_seq_init(&status, maps);
	while ((entry = hash_seq_search(&status)) != NULL)
	{
		if (!OidIsValid(relid) || entry->map->relid == relid || entry->map->source_relid == relid)
			entry->map->valid = false;
	}
}

/* Does the map still hold this trigger's arguments? */
static bool
SameArgs(const CaptureMap *map, const Trigger *trigger)
{
	if (map->nargs != trigger->tgnargs)
		return false;
	for (int i = 0; i < map->nargs; i++)
		if (strcmp(map->args[i], trigger->tgargs[i]) != 0)
			return false;
	return true;
}

/*
 * The mapping of the trigger being fired: kept from an earlier row or
 * statement of this session, or resolved now.  An invalidation only marks
 * a map stale (it may be in use); it is replaced here, between firings.
 */
static CaptureMap *
GetMap(TriggerData *td)
{
	Trigger    *trigger = td->tg_trigger;
	Relation	rel = td->tg_relation;
	CaptureEntry *entry;
	CaptureMap *map;
	bool		found;

	if (maps == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(Oid);
		ctl.entrysize = sizeof(CaptureEntry);
		ctl.hcxt = CacheMemoryContext;
		maps = hash_create("monk_capture mappings", 16, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		CacheRegisterRelcacheCallback(InvalidateMaps, (Datum) 0);
	}
	entry = hash_search(maps, &trigger->tgoid, HASH_FIND, NULL);
	if (entry && entry->map->valid && entry->map->relid == RelationGetRelid(rel) &&
		SameArgs(entry->map, trigger))
		return entry->map;

	map = BuildMap(rel, SourceRelation(rel, trigger->tgisclone), trigger->tgnargs, trigger->tgargs);
	MemoryContextSetParent(map->cxt, CacheMemoryContext);
	map->tgoid = trigger->tgoid;
	map->valid = true;
	entry = hash_search(maps, &trigger->tgoid, HASH_ENTER, &found);
	if (found)
		MemoryContextDelete(entry->map->cxt);
	entry->map = map;
	return map;
}

/* ------------------------------------------------------------------------
 * A row as an event
 * ------------------------------------------------------------------------
 */

/* Fill *err and return false. */
static bool
Fail(MonkEventError *err, char *message, char *detail, char *hint)
{
	err->field = NULL;
	err->message = message;
	err->detail = detail;
	err->hint = hint;
	return false;
}

/*
 * Append a value as text (keys, external customer ids): the type's output,
 * except for the types whose output depends on settings (DateStyle,
 * extra_float_digits, TimeZone), written in one fixed form instead.
 */
static void
AppendText(StringInfo buf, const CaptureColumn *col, Datum value)
{
	char		digits[Max(MAXINT8LEN, DOUBLE_SHORTEST_DECIMAL_LEN) + 1];
	char		date[MAXDATELEN + 1];

	switch (col->kind)
	{
		case KIND_TEXT:
			{
				text	   *t = DatumGetTextPP(value);

				appendBinaryStringInfo(buf, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
				return;
			}
		case KIND_INT:
			appendBinaryStringInfo(buf, digits,
								   pg_lltoa(col->type == INT8OID ? DatumGetInt64(value) :
											col->type == INT4OID ? DatumGetInt32(value) :
											DatumGetInt16(value), digits));
			return;
		case KIND_FLOAT4:
			float_to_shortest_decimal_buf(DatumGetFloat4(value), digits);
			appendStringInfoString(buf, digits);
			return;
		case KIND_FLOAT8:
			double_to_shortest_decimal_buf(DatumGetFloat8(value), digits);
			appendStringInfoString(buf, digits);
			return;
		case KIND_TIMESTAMPTZ:
			if (MonkTimestampInIsoRange(DatumGetTimestampTz(value)))
			{
				MonkRenderTimestamp(buf, DatumGetTimestampTz(value));
				return;
			}
			break;
		case KIND_TIMESTAMP:
		case KIND_DATE:
			appendStringInfoString(buf, JsonEncodeDateTime(date, value, col->type, NULL));
			return;
		default:
			break;
	}
	appendStringInfoString(buf, OutputFunctionCall((FmgrInfo *) &col->out, value));
}

/* What became of a property's value. */
typedef enum PropertyValue
{
	PROPERTY_WRITTEN,
	PROPERTY_DROPPED,			/* a JSON null: left out, as monk_send does */
	PROPERTY_REFUSED			/* see *err */
} PropertyValue;

/* A number of a property, checked as monk_send checks one. */
static PropertyValue
AppendNumeric(StringInfo buf, const CaptureColumn *col, Numeric num, MonkEventError *err)
{
	char	   *s;

	if (numeric_is_nan(num) || numeric_is_inf(num))
	{
		Fail(err, psprintf("column \"%s\" is not a finite number", col->name),
			 NULL, pstrdup("The Events API takes finite numbers only."));
		return PROPERTY_REFUSED;
	}
	if (!MonkNumericFitsApi(num, &s))
	{
		Fail(err, psprintf("column \"%s\" holds a number the Events API cannot hold exactly", col->name),
			 MonkNumericRefusal(s), pstrdup("Round it, or map a text column."));
		return PROPERTY_REFUSED;
	}
	appendStringInfoString(buf, s);
	return PROPERTY_WRITTEN;
}

/* A jsonb property: its scalar. */
static PropertyValue
AppendJsonb(StringInfo buf, const CaptureColumn *col, Jsonb *jb, MonkEventError *err)
{
	JsonbValue	v;

	if (!JsonbExtractScalar(&jb->root, &v))
	{
		Fail(err, psprintf("column \"%s\" holds a JSON %s, not a string, number or boolean",
						   col->name, JsonContainerIsArray(&jb->root) ? "array" : "object"),
			 NULL, pstrdup("Map each value as a column of its own, for example a generated column."));
		return PROPERTY_REFUSED;
	}
	switch (v.type)
	{
		case jbvString:
			MonkEscapeJson(buf, v.val.string.val, v.val.string.len);
			return PROPERTY_WRITTEN;
		case jbvNumeric:
			return AppendNumeric(buf, col, v.val.numeric, err);
		case jbvBool:
			appendStringInfoString(buf, v.val.boolean ? "true" : "false");
			return PROPERTY_WRITTEN;
		default:
			return PROPERTY_DROPPED;
	}
}

/* Append a property's value as JSON. */
static PropertyValue
AppendValue(StringInfo buf, const CaptureColumn *col, Datum value, MonkEventError *err)
{
	StringInfoData str;

	switch (col->kind)
	{
		case KIND_INT:
			AppendText(buf, col, value);
			return PROPERTY_WRITTEN;
		case KIND_FLOAT4:
		case KIND_FLOAT8:
			{
				double		v = col->kind == KIND_FLOAT4 ? DatumGetFloat4(value) : DatumGetFloat8(value);

				if (isnan(v) || isinf(v))
				{
					Fail(err, psprintf("column \"%s\" is not a finite number", col->name),
						 NULL, pstrdup("The Events API takes finite numbers only."));
					return PROPERTY_REFUSED;
				}
				AppendText(buf, col, value);
				return PROPERTY_WRITTEN;
			}
		case KIND_NUMERIC:
			return AppendNumeric(buf, col, DatumGetNumeric(value), err);
		case KIND_BOOL:
			appendStringInfoString(buf, DatumGetBool(value) ? "true" : "false");
			return PROPERTY_WRITTEN;
		case KIND_JSONB:
			return AppendJsonb(buf, col, DatumGetJsonbP(value), err);
		case KIND_JSON:
			return AppendJsonb(buf, col,
							   DatumGetJsonbP(DirectFunctionCall1(jsonb_in,
																  CStringGetDatum(TextDatumGetCString(value)))),
							   err);
		case KIND_TEXT:
			{
				text	   *t = DatumGetTextPP(value);

				MonkEscapeJson(buf, VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t));
				return PROPERTY_WRITTEN;
			}
		case KIND_TIMESTAMPTZ:
			if (!MonkTimestampInIsoRange(DatumGetTimestampTz(value)))
			{
				Fail(err, psprintf("column \"%s\" is out of range", col->name),
					 pstrdup("Timestamps must be finite and between the years 1 and 9999."), NULL);
				return PROPERTY_REFUSED;
			}
			break;
		default:
			break;
	}
	/* a string: the value as text (timestamps in ISO 8601) */
	initStringInfo(&str);
	AppendText(&str, col, value);
	MonkEscapeJson(buf, str.data, str.len);
	pfree(str.data);
	return PROPERTY_WRITTEN;
}

/* The properties object; NULL columns (and JSON nulls) are left out. */
static bool
RenderProperties(const CaptureMap *map, TupleTableSlot *slot, StringInfo buf, MonkEventError *err)
{
	bool		first = true;

	appendStringInfoChar(buf, '{');
	for (int i = 0; i < map->nprops; i++)
	{
		const CaptureProperty *prop = &map->props[i];
		int			mark = buf->len;
		Datum		value = 0;
		bool		isnull = false;
		PropertyValue result = PROPERTY_WRITTEN;

		if (prop->col.attnum)
			value = slot_getattr(slot, prop->col.attnum, &isnull);
		if (isnull)
			continue;
		if (!first)
			appendStringInfoChar(buf, ',');
		appendStringInfoString(buf, prop->label);
		if (prop->constant)
			appendStringInfoString(buf, prop->constant);
		else
			result = AppendValue(buf, &prop->col, value, err);
		if (result == PROPERTY_REFUSED)
			return false;
		if (result == PROPERTY_DROPPED)
		{
			buf->len = mark;
			buf->data[mark] = '\0';
			continue;
		}
		first = false;
	}
	appendStringInfoChar(buf, '}');
	return true;
}

/* Append a key value with ',' ':' and '\' escaped. */
static void
AppendKeyPart(StringInfo buf, const CaptureColumn *col, Datum value)
{
	StringInfoData str;

	if (col->kind == KIND_INT)
	{
		AppendText(buf, col, value);
		return;
	}
	initStringInfo(&str);
	AppendText(&str, col, value);
	for (int i = 0; i < str.len; i++)
	{
		if (str.data[i] == ',' || str.data[i] == ':' || str.data[i] == '\\')
			appendStringInfoChar(buf, '\\');
		appendStringInfoChar(buf, str.data[i]);
	}
	pfree(str.data);
}

/* The row's idempotency key: key=<column>, or prefix, table, primary key, event. */
static bool
RowKey(const CaptureMap *map, TupleTableSlot *slot, StringInfo key, MonkEventError *err)
{
	resetStringInfo(key);
	if (map->key.attnum)
	{
		bool		isnull;
		Datum		value = slot_getattr(slot, map->key.attnum, &isnull);

		if (isnull)
			return Fail(err, psprintf("column \"%s\" (the key) is null", map->key.name), NULL,
						pstrdup("Leave key= out to have the key derived from the primary key."));
		AppendText(key, &map->key, value);
		return true;
	}
	appendStringInfoString(key, monk_idempotency_prefix ? monk_idempotency_prefix : "");
	appendStringInfoString(key, map->source);
	appendStringInfoChar(key, ':');
	for (int i = 0; i < map->npk; i++)
	{
		bool		isnull;
		Datum		value = slot_getattr(slot, map->pk[i].attnum, &isnull);

		if (i > 0)
			appendStringInfoChar(key, ',');
		if (!isnull)
			AppendKeyPart(key, &map->pk[i], value);
	}
	appendStringInfoChar(key, ':');
	appendStringInfoString(key, map->event_name);
	return true;
}

/* The event's timestamp from its column (timestamp and date in the session's zone). */
static TimestampTz
ToTimestamptz(const CaptureColumn *col, Datum value)
{
	switch (col->kind)
	{
		case KIND_TIMESTAMP:
			return DatumGetTimestampTz(DirectFunctionCall1(timestamp_timestamptz, value));
		case KIND_DATE:
			return DatumGetTimestampTz(DirectFunctionCall1(date_timestamptz, value));
		default:
			return DatumGetTimestampTz(value);
	}
}

/* The customer: at least one of the mapped columns must hold a value. */
static bool
RowCustomer(const CaptureMap *map, TupleTableSlot *slot, StringInfo buf, MonkEvent *ev,
			MonkEventError *err)
{
	bool		isnull;
	Datum		value;

	if (map->external.attnum)
	{
		value = slot_getattr(slot, map->external.attnum, &isnull);
		if (!isnull)
		{
			resetStringInfo(buf);
			AppendText(buf, &map->external, value);
			ev->external_customer_id = buf->data;
		}
	}
	if (map->customer.attnum)
	{
		value = slot_getattr(slot, map->customer.attnum, &isnull);
		if (!isnull)
			ev->customer_id = DatumGetUUIDP(value);
	}
	if (ev->external_customer_id || ev->customer_id)
		return true;
	return Fail(err,
				map->external.attnum && map->customer.attnum ?
				psprintf("columns \"%s\" and \"%s\" are both null", map->customer.name, map->external.name) :
				psprintf("column \"%s\" is null",
						 map->external.attnum ? map->external.name : map->customer.name),
				pstrdup("Every event needs a customer."),
				pstrdup("Make the column NOT NULL, or leave such rows out with WHEN (...) in CREATE TRIGGER."));
}

/*
 * The event of a row, rendered into text->json as the JSON the API receives,
 * under the key in text->key.  False (and *err) when the row breaks a rule
 * of the API.
 */
static bool
RowEvent(const CaptureMap *map, TupleTableSlot *slot, RowBuffers *bufs, TimestampTz now,
		 MonkEventError *err)
{
	MonkEvent	ev;

	memset(&ev, 0, sizeof(ev));
	ev.event_name = map->event_name;
	ev.idempotency_key = bufs->key.data;
	ev.names = &map->names;
	if (!RowCustomer(map, slot, &bufs->customer, &ev, err))
		return false;
	if (map->timestamp.attnum)
	{
		bool		isnull;
		Datum		value = slot_getattr(slot, map->timestamp.attnum, &isnull);

		ev.has_timestamp = !isnull;
		if (!isnull)
			ev.timestamp = ToTimestamptz(&map->timestamp, value);
	}
	if (!ev.has_timestamp)
	{
		ev.has_timestamp = true;
		ev.timestamp = GetCurrentTransactionStartTimestamp();
	}
	if (map->nprops > 0)
	{
		resetStringInfo(&bufs->props);
		if (!RenderProperties(map, slot, &bufs->props, err))
			return false;
		ev.properties_json = bufs->props.data;
	}
	if (!MonkEventCheck(&ev, now, err))
		return false;
	resetStringInfo(&bufs->json);
	MonkEventRender(&bufs->json, &ev, bufs->key.data);
	return true;
}

/* Make a row's buffers. */
static void
InitRowBuffers(RowBuffers *bufs)
{
	initStringInfo(&bufs->key);
	initStringInfo(&bufs->json);
	initStringInfo(&bufs->customer);
	initStringInfo(&bufs->props);
}

/* An UPDATE changed the primary key, from which the default key comes. */
static void
RaiseKeyChanged(const CaptureMap *map, const char *old_key, const char *new_key)
{
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("monk_capture cannot follow a change of the primary key of table \"%s\"", map->relname),
			 old_key ? errdetail("The event's key would change from \"%s\" to \"%s\", and the row would be billed twice.",
								 old_key, new_key)
			 : errdetail("An event's key would change (to \"%s\"), and its row would be billed twice.", new_key),
			 errhint("Do not update the primary key of a captured row, or pass 'key=<column>' naming a column that never changes.")));
}

/* ------------------------------------------------------------------------
 * Firing
 * ------------------------------------------------------------------------
 */

/* Queue one event: a fresh outbox id, the same wake-up as monk_send. */
static void
Queue(MonkOutboxAppender *ap, const RowBuffers *bufs, TimestampTz now)
{
	MonkOutboxAppend(ap, MonkOutboxNextId(), bufs->key.data, bufs->key.len, bufs->json.data, bufs->json.len, now);
}

/* FOR EACH ROW: the new row's event, unless an UPDATE left it as it was. */
static void
CaptureRow(const CaptureMap *map, TriggerData *td)
{
	bool		update = TRIGGER_FIRED_BY_UPDATE(td->tg_event);
	TupleTableSlot *row = update ? td->tg_newslot : td->tg_trigslot;
	TimestampTz now = GetCurrentTimestamp();
	RowBuffers	bufs;
	MonkEventError err;
	MonkOutboxAppender *ap;

	InitRowBuffers(&bufs);
	if (!RowKey(map, row, &bufs.key, &err) || !RowEvent(map, row, &bufs, now, &err))
		MonkEventRaise(&err);
	if (update)
	{
		RowBuffers	old;

		InitRowBuffers(&old);
		if (RowKey(map, td->tg_trigslot, &old.key, &err))
		{
			if (map->key.attnum == 0 && strcmp(old.key.data, bufs.key.data) != 0)
				RaiseKeyChanged(map, old.key.data, bufs.key.data);
			if (RowEvent(map, td->tg_trigslot, &old, now, &err) &&
				strcmp(old.json.data, bufs.json.data) == 0)
				return;			/* nothing the event holds has changed */
		}
	}
	MonkOutboxCheckCapacity();
	ap = MonkOutboxAppendBegin(false);
	Queue(ap, &bufs, now);
	MonkOutboxAppendEnd(ap);
	MonkWakeWorkerAtCommit(1);
}

/* Start reading a transition table from its beginning with a pointer of our own. */
static void
StartReading(Tuplestorestate *rows)
{
	int			ptr = tuplestore_alloc_read_pointer(rows, 0);

	tuplestore_select_read_pointer(rows, ptr);
	tuplestore_rescan(rows);
}

typedef struct OldRow
{
	char	   *key;			/* hash key: the string it points to */
	char	   *json;			/* its event, or NULL if it had none */
} OldRow;

static uint32
OldRowHash(const void *key, Size keysize)
{
	const char *s = *(char *const *) key;

	return DatumGetUInt32(hash_any((const unsigned char *) s, strlen(s)));
}

static int
OldRowMatch(const void *a, const void *b, Size keysize)
{
	return strcmp(*(char *const *) a, *(char *const *) b);
}

/* The events of the old rows of an UPDATE, by key. */
static HTAB *
IndexOldRows(const CaptureMap *map, TriggerData *td, TupleTableSlot *slot, TimestampTz now)
{
	HASHCTL		ctl;
	HTAB	   *old;
	RowBuffers	bufs;
	MonkEventError err;

	ctl.keysize = sizeof(char *);
	ctl.entrysize = sizeof(OldRow);
	ctl.hash = OldRowHash;
	ctl.match = OldRowMatch;
	ctl.hcxt = CurrentMemoryContext;
	old = hash_create("monk_capture old rows", 1024, &ctl,
					  HASH_ELEM | HASH_FUNCTION | HASH_COMPARE | HASH_CONTEXT);
	InitRowBuffers(&bufs);
	StartReading(td->tg_oldtable);
	while (tuplestore_gettupleslot(td->tg_oldtable, true, false, slot))
	{
		char	   *k;
		OldRow	   *entry;
		bool		found;

		if (!RowKey(map, slot, &bufs.key, &err))
			continue;
		k = pstrdup(bufs.key.data);
		entry = hash_search(old, &k, HASH_ENTER, &found);
		entry->json = RowEvent(map, slot, &bufs, now, &err) ? pstrdup(bufs.json.data) : NULL;
	}
	tuplestore_select_read_pointer(td->tg_oldtable, 0);
	return old;
}

/*
 * FOR EACH STATEMENT: the new rows' events, read from the transition table
 * in one pass and appended with the segment opened once.
 */
static void
CaptureStatement(const CaptureMap *map, TriggerData *td)
{
	bool		update = TRIGGER_FIRED_BY_UPDATE(td->tg_event);
	Tuplestorestate *rows = td->tg_newtable;
	TimestampTz now = GetCurrentTimestamp();
	TupleTableSlot *slot;
	MemoryContext rowcxt;
	HTAB	   *old;
	MonkOutboxAppender *ap;
	RowBuffers	bufs;
	int			queued = 0;

	if (tuplestore_tuple_count(rows) == 0)
		return;
	slot = MakeSingleTupleTableSlot(RelationGetDescr(td->tg_relation), &TTSOpsMinimalTuple);
	rowcxt = AllocSetContextCreate(CurrentMemoryContext, "monk_capture row", ALLOCSET_DEFAULT_SIZES);
	old = update ? IndexOldRows(map, td, slot, now) : NULL;
	MonkOutboxCheckCapacity();
	ap = MonkOutboxAppendBegin(true);
	InitRowBuffers(&bufs);
	StartReading(rows);
	while (tuplestore_gettupleslot(rows, true, false, slot))
	{
		MemoryContext outer = MemoryContextSwitchTo(rowcxt);
		MonkEventError err;
		OldRow	   *prev = NULL;

		if (!RowKey(map, slot, &bufs.key, &err) || !RowEvent(map, slot, &bufs, now, &err))
			MonkEventRaise(&err);
		if (old)
		{
			char	   *k = bufs.key.data;

			prev = hash_search(old, &k, HASH_FIND, NULL);
			if (prev == NULL && map->key.attnum == 0)
				RaiseKeyChanged(map, NULL, bufs.key.data);
		}
		if (prev == NULL || prev->json == NULL || strcmp(prev->json, bufs.json.data) != 0)
		{
			Queue(ap, &bufs, now);
			queued++;
		}
		MemoryContextSwitchTo(outer);
		MemoryContextReset(rowcxt);
	}
	tuplestore_select_read_pointer(rows, 0);
	MonkOutboxAppendEnd(ap);
	ExecDropSingleTupleTableSlot(slot);
	MemoryContextDelete(rowcxt);
	if (queued > 0)
		MonkWakeWorkerAtCommit(queued);
}

/* Name the trigger and the table in the context of any error. */
static void
CaptureErrorContext(void *arg)
{
	TriggerData *td = (TriggerData *) arg;

	errcontext("monk_capture trigger \"%s\" on table \"%s\"",
			   td->tg_trigger->tgname, RelationGetRelationName(td->tg_relation));
}

/* monk_capture(event_name, option, ...): the trigger function. */
Datum
monk_capture(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	ErrorContextCallback context;
	const CaptureMap *map;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("monk_capture must be called as a trigger"),
				 errhint("Use it in CREATE TRIGGER ... EXECUTE FUNCTION monk_capture('event_name', 'external_customer_id=<column>', ...).")));
	MonkRequirePreload();
	context.callback = CaptureErrorContext;
	context.arg = td;
	context.previous = error_context_stack;
	error_context_stack = &context;

	CheckForm(td->tg_trigger->tgtype, td->tg_trigger->tgnewtable != NULL,
			  td->tg_trigger->tgoldtable != NULL, td->tg_trigger->tgname);
	map = GetMap(td);
	if (TRIGGER_FIRED_FOR_ROW(td->tg_event))
		CaptureRow(map, td);
	else
		CaptureStatement(map, td);

	error_context_stack = context.previous;
	return PointerGetDatum(NULL);
}
