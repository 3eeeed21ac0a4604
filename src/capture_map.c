/*
 * capture_map.c
 *		The mapping of a monk_capture trigger: its arguments resolved against
 *		its table, checked when the trigger is created and kept per trigger
 *		for the session.
 *
 * The arguments are the event name, then options written name=value:
 * external_customer_id=<column> and/or customer_id=<column> (one required),
 * properties=<column>[,...], property.<name>=<column> (a property named
 * otherwise than its column), constant.<name>=<text>, timestamp=<column>
 * and key=<column>.  They are resolved once -- column numbers, how each
 * value is written as JSON, output functions, the primary key -- into a
 * mapping in a memory context of its own, rebuilt when the table or the
 * trigger changes (a relcache invalidation marks it stale; it is replaced
 * between firings).  CREATE TRIGGER runs the same resolution through the
 * ProcessUtility hook (ddl.c), so that a mistake is an error then.
 */
#include "postgres.h"

#include <ctype.h>

#include "access/htup_details.h"
#include "access/relation.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_index.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "nodes/parsenodes.h"
#include "parser/parse_func.h"
#include "utils/builtins.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "capture.h"
#include "capture_map.h"
#include "keys.h"
#include "compat.h"
#include "source.h"

/* A trigger's mapping, in the session's hash of them. */
typedef struct CaptureEntry
{
	Oid			tgoid;
	MonkCaptureMap *map;
} CaptureEntry;

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
static MonkCaptureKind
KindOf(Oid type)
{
	switch (type)
	{
		case TEXTOID:
		case VARCHAROID:
			return MONK_CAPTURE_TEXT;
		case INT2OID:
		case INT4OID:
		case INT8OID:
			return MONK_CAPTURE_INT;
		case FLOAT4OID:
			return MONK_CAPTURE_FLOAT4;
		case FLOAT8OID:
			return MONK_CAPTURE_FLOAT8;
		case NUMERICOID:
			return MONK_CAPTURE_NUMERIC;
		case BOOLOID:
			return MONK_CAPTURE_BOOL;
		case JSONBOID:
			return MONK_CAPTURE_JSONB;
		case JSONOID:
			return MONK_CAPTURE_JSON;
		case TIMESTAMPTZOID:
			return MONK_CAPTURE_TIMESTAMPTZ;
		case TIMESTAMPOID:
			return MONK_CAPTURE_TIMESTAMP;
		case DATEOID:
			return MONK_CAPTURE_DATE;
		case UUIDOID:
			return MONK_CAPTURE_UUID;
		default:
			return MONK_CAPTURE_OTHER;
	}
}

/*
 * Resolve a column by its exact name (42703 when there is none).  A name in
 * double quotes, as SQL writes it ("customerId", "a""b"), is the name inside.
 */
static void
ResolveColumn(MonkCaptureMap *map, TupleDesc desc, const char *name, const char *option,
			  MonkCaptureColumn *col)
{
	const char *near = NULL;
	Oid			outfn;
	bool		varlena;
	size_t		len = strlen(name);

	if (len >= 2 && name[0] == '"' && name[len - 1] == '"')
	{
		StringInfoData unquoted;

		initStringInfo(&unquoted);
		for (size_t i = 1; i < len - 1; i++)
		{
			if (name[i] == '"' && name[i + 1] == '"' && i + 1 < len - 1)
				i++;
			appendStringInfoChar(&unquoted, name[i]);
		}
		name = unquoted.data;
	}

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
				 near ? errhint("Column names are matched exactly, case included: write %s=%s.", option, near) : 0));

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
MapField(MonkCaptureMap *map, TupleDesc desc, const char *option, const char *value,
		 MonkCaptureColumn *col)
{
	if (col->attnum != 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("option %s of monk_capture is given twice", option)));
	ResolveColumn(map, desc, value, option, col);
}

/* Add a property, from a column (column != NULL) or a constant. */
static void
AddProperty(MonkCaptureMap *map, TupleDesc desc, const char *name, const char *column,
			const char *constant, const char *option)
{
	MonkCaptureProperty *prop;
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
	map->props = map->nprops == 0 ? palloc0(sizeof(MonkCaptureProperty))
		: repalloc(map->props, sizeof(MonkCaptureProperty) * (map->nprops + 1));
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
AddProperties(MonkCaptureMap *map, TupleDesc desc, const char *list)
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
ParseOption(MonkCaptureMap *map, TupleDesc desc, const char *arg)
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
CheckFieldTypes(const MonkCaptureMap *map)
{
	if (map->customer.attnum && map->customer.kind != MONK_CAPTURE_UUID)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" mapped to customer_id is of type %s, not uuid",
						map->customer.name, format_type_be(map->customer.type)),
				 errhint("customer_id is Monk's customer UUID; map your own identifier of the customer with external_customer_id=.")));
	if (map->timestamp.attnum && map->timestamp.kind != MONK_CAPTURE_TIMESTAMPTZ &&
		map->timestamp.kind != MONK_CAPTURE_TIMESTAMP && map->timestamp.kind != MONK_CAPTURE_DATE)
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
ResolvePrimaryKey(MonkCaptureMap *map, Relation rel)
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
	map->pk = palloc0(sizeof(MonkCaptureColumn) * map->npk);
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
FieldName(const MonkCaptureColumn *col, const char *field)
{
	return col->attnum ? psprintf("column \"%s\"", col->name) : field;
}

/*
 * Resolve a trigger's arguments against its table.  "source" is the table
 * keys are named after.  The map lives in a memory context of its own,
 * made under the current one.
 */
static MonkCaptureMap *
BuildMap(Relation rel, Oid source, int nargs, char **args)
{
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext, "monk_capture mapping",
											  ALLOCSET_SMALL_SIZES);
	MemoryContext old = MemoryContextSwitchTo(cxt);
	MonkCaptureMap *map = palloc0(sizeof(MonkCaptureMap));
	TupleDesc	desc = RelationGetDescr(rel);

	map->cxt = cxt;
	map->relid = RelationGetRelid(rel);
	map->source_relid = source;
	map->relname = pstrdup(RelationGetRelationName(rel));
	map->source = MonkSourceName(source);
	map->legacy_keys = MonkCaptureLegacy(map->source);
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
void
MonkCaptureCheckForm(int16 tgtype, bool new_table, bool old_table, const char *tgname)
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
 * A row moved to another partition by an UPDATE of its partition key is
 * deleted from one partition and inserted into the other (at row level only
 * the destination's AFTER INSERT fires): its default key, made of the
 * primary key, which holds the partition key, would change with it, and the
 * row would be billed twice.  So a partitioned table or a partition needs
 * key=<column>.
 */
static void
CheckPartitionKey(Relation rel, bool has_key)
{
	if (has_key ||
		(rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE && !rel->rd_rel->relispartition))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
			 errmsg("monk_capture on %s \"%s\" needs key=<column>",
					rel->rd_rel->relispartition ? "partition" : "partitioned table", RelationGetRelationName(rel)),
			 errdetail("A row that an UPDATE moves to another partition is inserted there anew; the default key, "
					   "derived from the primary key (which holds the partition key), would change, and the row be billed twice."),
			 errhint("Pass 'key=<column>' naming a column whose value is the row's idempotency key and stays when the row moves, "
					 "for example key text GENERATED ALWAYS AS ('sync_orders_' || id) STORED.")));
}

/*
 * ALTER TABLE ... ATTACH PARTITION just ran: a monk_capture trigger the
 * table had of its own (not one cloned from its new parent) must name its
 * key= too, as CREATE TRIGGER on a partition must.
 */
void
MonkCaptureCheckAttach(Oid relid)
{
	Relation	rel = relation_open(relid, AccessShareLock);

	for (int i = 0; rel->trigdesc && i < rel->trigdesc->numtriggers; i++)
	{
		Trigger    *tg = &rel->trigdesc->triggers[i];
		bool		has_key = false;

		if (tg->tgisclone || !IsMonkCapture(tg->tgfoid))
			continue;
		for (int a = 0; a < tg->tgnargs; a++)
		{
			if (strncmp(tg->tgargs[a], "key=", 4) == 0)
				has_key = true;
		}
		CheckPartitionKey(rel, has_key);
	}
	relation_close(rel, AccessShareLock);
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
	MonkCaptureMap *map;

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
	MonkCaptureCheckForm(tgtype, new_table, old_table, stmt->trigname);

	args = palloc(sizeof(char *) * Max(list_length(stmt->args), 1));
	foreach(lc, stmt->args)
		args[nargs++] = strVal(lfirst(lc));
	rel = relation_open(RangeVarGetRelid(stmt->relation, NoLock, false), AccessShareLock);
	map = BuildMap(rel, RelationGetRelid(rel), nargs, args);

	CheckPartitionKey(rel, map->key.attnum != 0);
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
SameArgs(const MonkCaptureMap *map, const Trigger *trigger)
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
MonkCaptureMap *
MonkCaptureGetMap(TriggerData *td)
{
	Trigger    *trigger = td->tg_trigger;
	Relation	rel = td->tg_relation;
	CaptureEntry *entry;
	MonkCaptureMap *map;
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
