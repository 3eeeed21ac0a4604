/*
 * xact.c
 *		Generic helpers for the statements monk runs itself: a short
 *		transaction with SPI around them, kept plans, the safe search_path,
 *		the worker's wait points.
 *
 * Whatever monk runs with rights other than its caller's -- the worker, as
 * the bootstrap superuser, and the statements store.c runs as the owner of
 * monk's tables -- resolves its functions and operators under
 * MONK_SAFE_SEARCH_PATH, never under the caller's, a role's or a database's
 * search_path: a role that can create objects in a schema on that path could
 * otherwise shadow "=" or now() with code that then runs with those rights.
 * Also the worker's named wait points, where a test can hold it
 * (monk.test_wait_points).
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "pgstat.h"
#include "utils/memutils.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/varlena.h"

#include "settings.h"
#include "xact.h"

/*
 * Prepare a statement once and keep its plan for the session.
 */
SPIPlanPtr
MonkPlanKeep(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types)
{
	if (*plan == NULL)
	{
		SPIPlanPtr	p = SPI_prepare(sql, nargs, types);

		if (p == NULL)
			elog(ERROR, "SPI_prepare failed for \"%s\": %s", sql, SPI_result_code_string(SPI_result));
		if (SPI_keepplan(p) != 0)
			elog(ERROR, "SPI_keepplan failed");
		*plan = p;
	}
	return *plan;
}

/* Run a kept plan and check its result. */
void
MonkPlanRun(SPIPlanPtr plan, Datum *values, const char *nulls, bool read_only, int expected,
			const char *what)
{
	int			ret = SPI_execute_plan(plan, values, nulls, read_only, 0);

	if (ret != expected)
		elog(ERROR, "%s failed: %s", what, SPI_result_code_string(ret));
}

/* The caller's memory context, restored when the transaction ends. */
static MemoryContext caller_cxt = NULL;

/* Open a short transaction with a snapshot and SPI. */
void
MonkXactBegin(const char *activity)
{
	caller_cxt = CurrentMemoryContext;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	PushActiveSnapshot(GetTransactionSnapshot());
	pgstat_report_activity(STATE_RUNNING, activity);
}

/* Commit the transaction opened by MonkXactBegin. */
void
MonkXactCommit(void)
{
	if (SPI_finish() != SPI_OK_FINISH)
		elog(ERROR, "SPI_finish failed");
	PopActiveSnapshot();
	CommitTransactionCommand();
	MemoryContextSwitchTo(caller_cxt);
	pgstat_report_stat(false);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * Switch to the safe search_path until MonkSafeSearchPathPop(), as a
 * function's SET clause does; an error's abort restores the caller's too.
 * Returns the level to pass to MonkSafeSearchPathPop().
 */
int
MonkSafeSearchPathPush(void)
{
	int			nest_level = NewGUCNestLevel();

	(void) set_config_option("search_path", MONK_SAFE_SEARCH_PATH, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	return nest_level;
}

/* Restore the search_path that MonkSafeSearchPathPush() replaced. */
void
MonkSafeSearchPathPop(int nest_level)
{
	AtEOXact_GUC(true, nest_level);
}

/*
 * Fix the safe search_path for the rest of a background process's life:
 * above the database's and the role's settings (ALTER DATABASE ... SET
 * search_path), and kept through reloads of the configuration file.
 */
void
MonkSafeSearchPathPin(void)
{
	SetConfigOption("search_path", MONK_SAFE_SEARCH_PATH, PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * The worker's reasoning about what its statements see assumes READ
	 * COMMITTED (a statement run not read-only takes a snapshot of its own)
	 * and writable transactions, whatever the database's defaults.
	 */
	SetConfigOption("default_transaction_isolation", "read committed", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("default_transaction_read_only", "off", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Its own commits (the frontier, sent batches, dead letters) are flushed
	 * here and never wait for a synchronous standby: a wait for one that is
	 * gone would ignore a fast shutdown (an HA manager could then never
	 * demote the server), and a frontier a failover loses only means events
	 * sent again under the same keys.
	 */
	SetConfigOption("synchronous_commit", "local", PGC_SUSET, PGC_S_OVERRIDE);

	/*
	 * Its memory is bounded by its own figures (README, Bounded resources),
	 * not by a database's work_mem or temp_buffers: the statements on a
	 * window's repeated keys spill to disk past these (half PostgreSQL's
	 * defaults: they run while the worker holds batches in memory).
	 */
	SetConfigOption("work_mem", "2MB", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("hash_mem_multiplier", "1", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("temp_buffers", "4MB", PGC_SUSET, PGC_S_OVERRIDE);
}

/* A table of schema monk, or InvalidOid (the extension is older, or absent). */
Oid
MonkTableOid(const char *name)
{
	Oid			nsp = get_namespace_oid("monk", true);

	return OidIsValid(nsp) ? get_relname_relid(name, nsp) : InvalidOid;
}

/* Is step named in monk.test_wait_points? */
bool
MonkTestStepListed(const char *step)
{
	char	   *copy;
	List	   *names;
	ListCell   *lc;
	bool		found = false;

	if (monk_test_wait_points == NULL || monk_test_wait_points[0] == '\0')
		return false;
	copy = pstrdup(monk_test_wait_points);
	if (!SplitIdentifierString(copy, ',', &names))
		return false;
	foreach(lc, names)
	{
		if (strcmp((const char *) lfirst(lc), step) == 0)
			found = true;
	}
	list_free(names);
	pfree(copy);
	return found;
}

/*
 * A named step of the worker where a test can hold it: when step is listed
 * in monk.test_wait_points, wait for the advisory lock (hashtext('monk'),
 * hashtext(step)) that a test session holds, shared and until the end of
 * the transaction.  In a transaction with SPI connected.
 */
void
MonkWaitPoint(const char *step)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	if (!MonkTestStepListed(step))
		return;
	pgstat_report_activity(STATE_RUNNING, psprintf("monk: wait point %s", step));
	values[0] = CStringGetTextDatum(step);
	if (SPI_execute_with_args("SELECT pg_catalog.pg_advisory_xact_lock_shared("
							  "pg_catalog.hashtext('monk'), pg_catalog.hashtext($1))",
							  1, types, values, NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "waiting at wait point %s failed", step);
}

/* MonkWaitPoint in a transaction of its own, when the caller has none. */
void
MonkWaitPointAlone(const char *step)
{
	if (!MonkTestStepListed(step))
		return;
	MonkXactBegin("monk: wait point");
	MonkWaitPoint(step);
	MonkXactCommit();
}
