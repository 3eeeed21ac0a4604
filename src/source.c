/*
 * source.c
 *		The sources of monk_batch_export and monk_verify_export: checking one,
 *		the query that reads it past an id, its rows as events, and the
 *		names and default keys they get (monk_capture names its tables the
 *		same way).
 *
 * A source is a table or view whose columns are mapped by name (id,
 * event_name, external_customer_id or customer_id, and optionally
 * timestamp, properties and idempotency_key); a view renames anything else.
 * A row's default key is the prefix (keys.c: sync_ and the database's id, or
 * 0.3's sync_ for a cursor made under 0.3) followed by its id, as the bulk
 * ingestion guide keys its rows.
 */
#include "postgres.h"

#include "access/relation.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "settings.h"
#include "source.h"

typedef struct SourceColumn
{
	const char *name;
	const char *expected;		/* for the error message */
	bool		required;
} SourceColumn;

static const SourceColumn source_columns[MONK_SOURCE_NCOLUMNS] = {
	{"id", "bigint", true},
	{"event_name", "text", true},
	{"external_customer_id", "text", false},
	{"customer_id", "uuid or text", false},
	{"timestamp", "timestamp with time zone", false},
	{"properties", "jsonb or json", false},
	{"idempotency_key", "text", false},
};

/* The quoted, schema-qualified name of a relation, as keys and messages name it. */
char *
MonkSourceName(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
}


/*
 * Check the source of an export or a verification: given, a table or view,
 * readable by the caller.  Returns it.
 */
Oid
MonkCheckSource(Oid source)
{
	char		relkind;
	AclResult	acl;

	if (!OidIsValid(source))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("source must not be NULL"),
				 errhint("Name the table or view to export, for example 'billing_events'.")));
	relkind = get_rel_relkind(source);
	if (relkind == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", source)));
	if (relkind != RELKIND_RELATION && relkind != RELKIND_VIEW && relkind != RELKIND_MATVIEW &&
		relkind != RELKIND_FOREIGN_TABLE && relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not a table or a view", get_rel_name(source)),
				 errhint("Sources are tables, views, materialized views and foreign tables.")));
	acl = pg_class_aclcheck(source, GetUserId(), ACL_SELECT);
	if (acl != ACLCHECK_OK)
		aclcheck_error(acl, get_relkind_objtype(relkind), get_rel_name(source));
	return source;
}

/* Is the type one of the text types (text, varchar, char, name)? */
static bool
IsTextType(Oid type)
{
	return type == TEXTOID || type == VARCHAROID || type == BPCHAROID || type == NAMEOID;
}

/* Is t a type the source's column c may have? */
static bool
ColumnTypeOk(int c, Oid t)
{
	switch (c)
	{
		case MONK_SOURCE_ID:
			return t == INT8OID || t == INT4OID || t == INT2OID;
		case MONK_SOURCE_CUSTOMER_ID:
			return t == UUIDOID || IsTextType(t);
		case MONK_SOURCE_TIMESTAMP:
			return t == TIMESTAMPTZOID;
		case MONK_SOURCE_PROPERTIES:
			return t == JSONBOID || t == JSONOID;
		default:
			return IsTextType(t);
	}
}

/*
 * Find the columns of the source by name and check their types; build the
 * query that reads it past an id ($1), in id order, one column per
 * MonkSourceColumn (NULL where the source has none).
 */
char *
MonkSourceQuery(Oid relid, bool from_start, bool with_pending, int *positions)
{
	Relation	rel = relation_open(relid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	char	   *relname = MonkSourceName(relid);
	StringInfoData cols;
	StringInfoData q;

	for (int c = 0; c < MONK_SOURCE_NCOLUMNS; c++)
		positions[c] = 0;
	for (int a = 0; a < desc->natts; a++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, a);

		if (att->attisdropped)
			continue;
		for (int c = 0; c < MONK_SOURCE_NCOLUMNS; c++)
		{
			Oid			t = att->atttypid;

			if (strcmp(NameStr(att->attname), source_columns[c].name) != 0)
				continue;
			if (!ColumnTypeOk(c, t))
				ereport(ERROR,
						(errcode(ERRCODE_DATATYPE_MISMATCH),
						 errmsg("column \"%s\" of %s must be of type %s, not %s",
								source_columns[c].name, relname, source_columns[c].expected,
								format_type_be(t)),
						 c == MONK_SOURCE_TIMESTAMP ?
						 errhint("Convert it in a view, for example \"timestamp\" AT TIME ZONE 'UTC' AS \"timestamp\".") :
						 errhint("Cast it in a view over the source.")));
			positions[c] = a + 1;
		}
	}
	relation_close(rel, AccessShareLock);

	for (int c = 0; c < MONK_SOURCE_NCOLUMNS; c++)
	{
		if (source_columns[c].required && positions[c] == 0)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_COLUMN),
					 errmsg("%s has no column \"%s\" (%s)", relname, source_columns[c].name,
							source_columns[c].expected),
					 errhint("Columns are mapped by name: id, event_name, external_customer_id or customer_id, and optionally timestamp, properties and idempotency_key. A view can rename them.")));
	}
	if (positions[MONK_SOURCE_EXTERNAL_ID] == 0 && positions[MONK_SOURCE_CUSTOMER_ID] == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("%s has neither an \"external_customer_id\" nor a \"customer_id\" column", relname),
				 errhint("Columns are mapped by name; a view can rename yours.")));

	initStringInfo(&cols);
	appendStringInfoString(&cols, "SELECT id::bigint");
	for (int c = MONK_SOURCE_EVENT_NAME; c < MONK_SOURCE_NCOLUMNS; c++)
	{
		const char *cast = (c == MONK_SOURCE_PROPERTIES) ? "jsonb" : (c == MONK_SOURCE_TIMESTAMP) ? "timestamptz" : "text";

		if (positions[c])
			appendStringInfo(&cols, ", %s::%s", quote_identifier(source_columns[c].name), cast);
		else
			appendStringInfo(&cols, ", NULL::%s", cast);
	}
	appendStringInfo(&cols, " FROM %s", relname);

	/*
	 * The rows of the pending ids ($2) first, then those past the cursor
	 * ($1), each part in id order.
	 */
	initStringInfo(&q);
	if (with_pending)
		appendStringInfo(&q, "(%s WHERE id OPERATOR(pg_catalog.=) ANY ($2) ORDER BY id) UNION ALL ", cols.data);
	appendStringInfo(&q, "(%s WHERE %s ORDER BY id)", cols.data,
					 from_start ? "id IS NOT NULL" : "id OPERATOR(pg_catalog.>) $1");
	return q.data;
}

/*
 * Open a cursor, inside SPI, over the rows that a query of MonkSourceQuery
 * reads: past "after", and those of the pending ids.
 */
Portal
MonkSourceOpen(const char *query, int64 after, const int64 *pending, int npending)
{
	Oid			argtypes[2] = {INT8OID, INT8ARRAYOID};
	Datum	   *elems = palloc(sizeof(Datum) * Max(npending, 1));
	Datum		args[2];
	SPIPlanPtr	plan;

	for (int i = 0; i < npending; i++)
		elems[i] = Int64GetDatum(pending[i]);
	args[0] = Int64GetDatum(after);
	args[1] = PointerGetDatum(construct_array(elems, npending, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
	plan = SPI_prepare(query, 2, argtypes);
	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed for \"%s\": %s", query, SPI_result_code_string(SPI_result));
	return SPI_cursor_open(NULL, plan, args, NULL, true);
}

/*
 * Refuse a source with a row whose id is NULL (it would never be read: the
 * cursor compares ids), naming the row.
 */
void
MonkSourceCheckNullIds(Oid relid)
{
	char	   *relname = MonkSourceName(relid);
	char	   *q = psprintf("SELECT pg_catalog.left(pg_catalog.row_to_json(s)::text, 300) FROM %s s WHERE id IS NULL LIMIT 1",
							 relname);
	bool		isnull;

	if (SPI_execute(q, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "reading the rows of %s whose id is NULL failed", relname);
	if (SPI_processed == 0)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
			 errmsg("%s has a row whose id is NULL", relname),
			 errdetail("The row: %s", TextDatumGetCString(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull))),
			 errhint("Every row needs an id: it is the export's cursor and its default key. Nothing was sent.")));
}

/* A JSON rendering of an invalid row, for the dead letters. */
static char *
RowJson(int64 id, const MonkEvent *ev, const char *customer_text)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfo(&buf, "{\"id\":" INT64_FORMAT, id);
	if (ev->event_name)
	{
		appendStringInfoString(&buf, ",\"event_name\":");
		MonkEscapeJson(&buf, ev->event_name, strlen(ev->event_name));
	}
	if (ev->external_customer_id)
	{
		appendStringInfoString(&buf, ",\"external_customer_id\":");
		MonkEscapeJson(&buf, ev->external_customer_id, strlen(ev->external_customer_id));
	}
	if (customer_text)
	{
		appendStringInfoString(&buf, ",\"customer_id\":");
		MonkEscapeJson(&buf, customer_text, strlen(customer_text));
	}
	if (ev->has_timestamp && !TIMESTAMP_NOT_FINITE(ev->timestamp))
	{
		char	   *ts = DatumGetCString(DirectFunctionCall1(timestamptz_out,
															 TimestampTzGetDatum(ev->timestamp)));

		appendStringInfoString(&buf, ",\"timestamp\":");
		MonkEscapeJson(&buf, ts, strlen(ts));
	}
	if (ev->properties)
	{
		appendStringInfoString(&buf, ",\"properties\":");
		appendStringInfoString(&buf, JsonbToCString(NULL, &ev->properties->root, VARSIZE(ev->properties)));
	}
	if (ev->idempotency_key)
	{
		appendStringInfoString(&buf, ",\"idempotency_key\":");
		MonkEscapeJson(&buf, ev->idempotency_key, strlen(ev->idempotency_key));
	}
	appendStringInfoChar(&buf, '}');
	return buf.data;
}

/*
 * Read a row of MonkSourceQuery's result as an event, with its key (its own,
 * or the default: prefix, then the id).  False, with *err and row->json (the row as JSON, for a
 * dead letter), when the row breaks a rule of the API.
 */
bool
MonkSourceRowRead(HeapTuple tuple, TupleDesc desc, TimestampTz now, const char *prefix,
				  MonkSourceRow *row, MonkEventError *err)
{
	bool		isnull;
	Datum		d;
	MonkEvent  *ev = &row->ev;

	memset(row, 0, sizeof(*row));
	ev->names = &MonkNamesColumns;
	d = SPI_getbinval(tuple, desc, 1, &isnull);
	if (isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("the source has a row whose id is NULL"),
				 errhint("Every row needs an id: it is the export's cursor and key.")));
	row->id = DatumGetInt64(d);
	ev->event_name = SPI_getvalue(tuple, desc, 2);
	ev->external_customer_id = SPI_getvalue(tuple, desc, 3);
	row->customer_text = SPI_getvalue(tuple, desc, 4);
	d = SPI_getbinval(tuple, desc, 5, &isnull);
	if (!isnull)
	{
		ev->has_timestamp = true;
		ev->timestamp = DatumGetTimestampTz(d);
	}
	d = SPI_getbinval(tuple, desc, 6, &isnull);
	if (!isnull)
		ev->properties = DatumGetJsonbP(d);
	ev->idempotency_key = SPI_getvalue(tuple, desc, 7);
	row->key = ev->idempotency_key ? ev->idempotency_key : psprintf("%s" INT64_FORMAT, prefix, row->id);

	if (row->customer_text)
	{
		pg_uuid_t  *uuid = palloc(sizeof(pg_uuid_t));

		if (!MonkParseUuid(row->customer_text, uuid))
		{
			MonkEventFail(err, "customer_id", "customer_id must be a UUID",
						  psprintf("The value is \"%s\".", row->customer_text), NULL);
			row->json = RowJson(row->id, ev, row->customer_text);
			return false;
		}
		ev->customer_id = uuid;
	}
	if (!MonkEventCheck(ev, now, err))
	{
		row->json = RowJson(row->id, ev, row->customer_text);
		return false;
	}
	return true;
}
