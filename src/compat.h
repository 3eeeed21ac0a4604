/*
 * compat.h
 *		Every difference between the PostgreSQL majors monk supports (15 to 19),
 *		in one place.
 *
 * The modules write against the newest API; each macro here maps it onto an
 * older major.  Include it after postgres.h and the headers that define what
 * it maps.  When a major goes out of support, its branch goes away here and
 * nowhere else.
 */
#ifndef MONK_COMPAT_H
#define MONK_COMPAT_H

/*
 * 18 replaced pg_attribute_noreturn(), written after a declaration, with
 * pg_noreturn, written before it.  GCC and Clang accept the attribute in front.
 */
#ifndef pg_noreturn
#define pg_noreturn pg_attribute_noreturn()
#endif

/*
 * 16 allocates the values and "extra" data of settings in a memory context:
 * check hooks must use guc_malloc()/guc_free(), which 15 does not export
 * (there they are plain malloc()/free()).  Both return NULL on failure.
 */
#if PG_VERSION_NUM < 160000
#define MonkGucMalloc(size) malloc(size)
#define MonkGucFree(ptr) free(ptr)
#else
#define MonkGucMalloc(size) guc_malloc(LOG, (size))
#define MonkGucFree(ptr) guc_free(ptr)
#endif

/* 16 renamed the table statistics' n_live_tuples to live_tuples. */
#if PG_VERSION_NUM < 160000
#define MonkStatLiveTuples(tabentry) ((tabentry)->n_live_tuples)
#else
#define MonkStatLiveTuples(tabentry) ((tabentry)->live_tuples)
#endif

/*
 * 17's CreateWaitEventSet() takes the resource owner that frees the set (NULL:
 * freed by FreeWaitEventSet() only) instead of a memory context.
 */
#if PG_VERSION_NUM < 170000
#define MonkCreateWaitEventSet(nevents) CreateWaitEventSet(CurrentMemoryContext, (nevents))
#else
#define MonkCreateWaitEventSet(nevents) CreateWaitEventSet(NULL, (nevents))
#endif

/*
 * 18's RelationGetPrimaryKeyIndex() returns a deferrable primary key only
 * when asked to; monk_capture derives keys from any primary key, as 15 to 17
 * return it.
 */
#if PG_VERSION_NUM < 180000
#define MonkPrimaryKeyIndex(rel) RelationGetPrimaryKeyIndex(rel)
#else
#define MonkPrimaryKeyIndex(rel) RelationGetPrimaryKeyIndex((rel), true)
#endif

/* 19 requires TupleDescFinalize() on a tuple descriptor built by hand. */
#if PG_VERSION_NUM < 190000
#define MonkTupleDescFinalize(desc) ((void) 0)
#else
#define MonkTupleDescFinalize(desc) TupleDescFinalize(desc)
#endif

#endif							/* MONK_COMPAT_H */
