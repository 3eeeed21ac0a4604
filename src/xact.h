/*
 * xact.h
 *		Generic helpers for the statements monk runs itself: a short
 *		transaction with SPI, kept plans, the search_path of code that runs
 *		with rights other than its caller's; the worker's wait points.
 */
#ifndef MONK_XACT_H
#define MONK_XACT_H

#include "executor/spi.h"

/*
 * The only search_path under which monk runs a statement with rights other
 * than its caller's (the worker, an owner switch): PostgreSQL's rule for
 * SECURITY DEFINER functions, so that no schema a role can create objects in
 * chooses a function or an operator monk calls.
 */
#define MONK_SAFE_SEARCH_PATH "pg_catalog, pg_temp"

/* A short transaction with a snapshot and SPI connected; kept plans. */
extern void MonkXactBegin(const char *activity);
extern void MonkXactCommit(void);
extern SPIPlanPtr MonkPlanKeep(SPIPlanPtr *plan, const char *sql, int nargs, Oid *types);
extern void MonkPlanRun(SPIPlanPtr plan, Datum *values, const char *nulls, bool read_only,
						int expected, const char *what);

extern int	MonkSafeSearchPathPush(void);
extern void MonkSafeSearchPathPop(int nest_level);
extern void MonkSafeSearchPathPin(void);
extern Oid	MonkTableOid(const char *name);
extern bool MonkTestStepListed(const char *step);
extern void MonkWaitPoint(const char *step);
extern void MonkWaitPointAlone(const char *step);

#endif
