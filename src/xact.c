/*
 * xact.c
 *		Generic helpers for the statements monk runs itself.
 *
 * Whatever monk runs with rights other than its caller's -- the worker, as
 * the bootstrap superuser, and the statements store.c runs as the owner of
 * monk's tables -- resolves its functions and operators under
 * MONK_SAFE_SEARCH_PATH, never under the caller's, a role's or a database's
 * search_path: a role that can create objects in a schema on that path could
 * otherwise shadow "=" or now() with code that then runs with those rights.
 */
#include "postgres.h"

#include "utils/guc.h"

#include "xact.h"

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
}
