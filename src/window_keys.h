/*
 * window_keys.h
 *		Which version of a key wins inside one window of the log (log.h,
 *		rule 2): the version with the higher outbox id.
 *
 * A window is read in (txid, id) order, which is not id order: a row read
 * after one with a higher id may be an older version of a key read before
 * it.  The newest id read of each key is kept in memory, up to
 * MONK_WINDOW_KEYS keys and MONK_WINDOW_KEY_BYTES of their bytes; past
 * either, the keys are let go (the memory stays bounded whatever the keys),
 * and the first row read out of id order asks for the window's repeated
 * keys from the log, which the reads then join (row->newest_id).
 */
#ifndef MONK_WINDOW_KEYS_H
#define MONK_WINDOW_KEYS_H

#include "utils/hsearch.h"

#include "outbox.h"

/*
 * Keys of a window kept in memory (about 80 bytes each, and the key).  The
 * sanitizer build makes it small, so that its run of the suite takes the
 * log's path everywhere.
 */
#ifndef MONK_WINDOW_KEYS
#define MONK_WINDOW_KEYS 65536
#endif
/* ... and of their bytes (long keys) */
#define MONK_WINDOW_KEY_BYTES (4 * 1024 * 1024)

typedef enum MonkVerdict
{
	MONK_VERSION_NEWEST,		/* no newer version of its key read so far */
	MONK_VERSION_SUPERSEDED,	/* a newer one of its window exists */
	MONK_VERSION_ASK_LOG		/* unknown until the window's repeated keys
								 * are read from the log */
} MonkVerdict;

typedef struct MonkWindowKeys
{
	MemoryContext parent;		/* where the table's own context is made */
	HTAB	   *seen;			/* newest id read of each key, by hash */
	MemoryContext cxt;			/* the table and its keys */
	int64		bytes;			/* the bytes of the keys in seen */
	int64		max_id_read;	/* the highest id read in the window */
	bool		overflowed;		/* seen grew too large and was let go */
	bool		in_log;			/* the reads join the log's repeated keys */
	bool		need_log;		/* they are needed before the next row */
} MonkWindowKeys;

extern void MonkWindowKeysInit(MonkWindowKeys *wk, MemoryContext parent, bool need_log);
extern MonkVerdict MonkWindowKeysJudge(MonkWindowKeys *wk, uint64 hash, const MonkOutboxRow *row);
extern void MonkWindowKeysInLog(MonkWindowKeys *wk);
extern void MonkWindowKeysRelease(MonkWindowKeys *wk);

#endif
