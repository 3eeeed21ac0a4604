/*
 * ddl.c
 *		monk's guard on the DDL that concerns it: a ProcessUtility hook.
 *
 * DROP EXTENSION monk, with or without CASCADE, and DROP SCHEMA ... CASCADE
 * of the schema the extension lives in, would throw away the events still
 * queued in its outbox: both are refused while the outbox holds any, with a
 * hint naming the two ways out (let the worker send them, or discard them
 * explicitly).  CREATE EXTENSION monk in a database that no worker exports
 * succeeds with a WARNING naming monk.databases, since its events would wait
 * forever.  CREATE TRIGGER ... EXECUTE FUNCTION monk_capture(...) has its form
 * and arguments checked (capture_map.c) before it commits.  Where monk is not
 * preloaded there is no hook: an event trigger (monk.capture_trigger_created,
 * in SQL) warns of a monk_capture trigger that would fail at its first row.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

#include "capture.h"
#include "ddl.h"
#include "settings.h"
#include "shmem.h"

static ProcessUtility_hook_type prev_process_utility = NULL;

/* Is "name" among the String nodes of a DROP statement's objects? */
static bool
NamesObject(List *objects, const char *name)
{
	ListCell   *lc;

	foreach(lc, objects)
	{
		Node	   *obj = lfirst(lc);

		if (IsA(obj, String) && strcmp(strVal(obj), name) == 0)
			return true;
	}
	return false;
}

/* The schema of an extension (get_extension_schema() is static before 16). */
static Oid
ExtensionSchema(Oid ext)
{
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			nsp = InvalidOid;

	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(ext));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	if (HeapTupleIsValid(tuple = systable_getnext(scan)))
		nsp = ((Form_pg_extension) GETSTRUCT(tuple))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return nsp;
}

/* Would this DROP statement drop extension monk of the current database? */
static bool
DropsMonk(DropStmt *stmt)
{
	Oid			ext;
	char	   *schema;

	if (stmt->removeType != OBJECT_EXTENSION &&
		!(stmt->removeType == OBJECT_SCHEMA && stmt->behavior == DROP_CASCADE))
		return false;
	ext = get_extension_oid("monk", true);
	if (!OidIsValid(ext))
		return false;
	if (stmt->removeType == OBJECT_EXTENSION)
		return NamesObject(stmt->objects, "monk");
	schema = get_namespace_name(ExtensionSchema(ext));
	return schema != NULL && (NamesObject(stmt->objects, schema) || NamesObject(stmt->objects, "monk"));
}

/* How many events wait in monk's outbox. */
static int64
QueuedEvents(void)
{
	int64		n = 0;
	bool		isnull;

	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	if (SPI_execute("SELECT pg_catalog.count(*) FROM monk.outbox", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "counting monk's queued events failed");
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	PopActiveSnapshot();
	SPI_finish();
	return n;
}

/* Refuse a DROP that would discard queued events. */
static void
GuardDrop(DropStmt *stmt)
{
	int64		queued;

	if (!DropsMonk(stmt))
		return;
	queued = QueuedEvents();
	if (queued > 0)
	{
		/* no worker will send them where the database is not listed */
		bool		served = MonkDatabaseListed(get_database_name(MyDatabaseId));

		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg_plural("cannot drop extension monk: " INT64_FORMAT " event is queued and not yet sent",
							   "cannot drop extension monk: " INT64_FORMAT " events are queued and not yet sent",
							   queued, queued),
				 errdetail("Dropping the extension would discard them, and they would never be billed."),
				 served ?
				 errhint("Wait until the worker has sent them (SELECT outbox_depth FROM monk.status), or discard them first with DELETE FROM monk.outbox.") :
				 errhint("No worker sends them: this database is not in monk.databases. Add it and reload (SELECT pg_reload_conf()) to have them sent, or discard them first with DELETE FROM monk.outbox.")));
	}
}

/* Warn when no worker exports the current database: its events would wait. */
void
MonkWarnIfNotExported(void)
{
	char	   *dbname = get_database_name(MyDatabaseId);

	if (dbname == NULL || MonkDatabaseListed(dbname))
		return;
	ereport(WARNING,
			(errcode(ERRCODE_WARNING),
			 errmsg("database \"%s\" is not in monk.databases: no worker sends its events", dbname),
			 errdetail("monk.databases is \"%s\".", monk_databases ? monk_databases : ""),
			 errhint("Add \"%s\" to monk.databases in postgresql.conf and reload (SELECT pg_reload_conf()); the events queued meanwhile are kept.",
					 dbname)));
}

/*
 * The database just given the extension: its worker, waiting for it, is
 * woken at the commit; warn when it has none.
 */
static void
CreatedExtension(CreateExtensionStmt *stmt)
{
	if (strcmp(stmt->extname, "monk") != 0)
		return;
	if (MonkDatabaseListed(get_database_name(MyDatabaseId)))
		MonkWakeWorkerAtCommit(0);
	else
		MonkWarnIfNotExported();
}

/* ALTER TABLE ... ATTACH PARTITION: the attached table's capture triggers. */
static void
CheckAttachedPartitions(AlterTableStmt *stmt)
{
	ListCell   *lc;

	foreach(lc, stmt->cmds)
	{
		AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);

		if (cmd->subtype == AT_AttachPartition)
		{
			PartitionCmd *pc = (PartitionCmd *) cmd->def;
			Oid			relid = RangeVarGetRelid(pc->name, NoLock, true);

			if (OidIsValid(relid))
				MonkCaptureCheckAttach(relid);
		}
	}
}

static void
MonkProcessUtility(PlannedStmt *pstmt, const char *queryString, bool readOnlyTree,
				   ProcessUtilityContext context, ParamListInfo params,
				   QueryEnvironment *queryEnv, DestReceiver *dest, QueryCompletion *qc)
{
	Node	   *parsetree = pstmt->utilityStmt;

	if (IsA(parsetree, DropStmt))
		GuardDrop((DropStmt *) parsetree);

	if (prev_process_utility)
		prev_process_utility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context, params, queryEnv, dest, qc);

	if (IsA(parsetree, CreateExtensionStmt))
		CreatedExtension((CreateExtensionStmt *) parsetree);
	else if (IsA(parsetree, CreateTrigStmt))
		MonkCaptureCheckCreate((CreateTrigStmt *) parsetree);
	else if (IsA(parsetree, AlterTableStmt))
		CheckAttachedPartitions((AlterTableStmt *) parsetree);
}

/* Install the hook (from _PG_init, when preloaded). */
void
MonkDdlInit(void)
{
	prev_process_utility = ProcessUtility_hook;
	ProcessUtility_hook = MonkProcessUtility;
}
