/*
 * xact.h
 *		Generic helpers for the statements monk runs itself: the search_path
 *		of code that runs with rights other than its caller's.
 */
#ifndef MONK_XACT_H
#define MONK_XACT_H

/*
 * The only search_path under which monk runs a statement with rights other
 * than its caller's (the worker, an owner switch): PostgreSQL's rule for
 * SECURITY DEFINER functions, so that no schema a role can create objects in
 * chooses a function or an operator monk calls.
 */
#define MONK_SAFE_SEARCH_PATH "pg_catalog, pg_temp"

extern int	MonkSafeSearchPathPush(void);
extern void MonkSafeSearchPathPop(int nest_level);
extern void MonkSafeSearchPathPin(void);

#endif
