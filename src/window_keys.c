/*
 * window_keys.c
 *		Which version of a key wins inside one window of the log: the table
 *		of the keys read in memory, bounded, and the switch to the log's
 *		list of the window's repeated keys (window_keys.h).
 */
#include "postgres.h"

#include "utils/memutils.h"

#include "window_keys.h"

/*
 * The keys of a window with one hash, each with the id of its newest version
 * read: the key itself is compared, since different keys can share a hash.
 */
typedef struct KeyVersion
{
	struct KeyVersion *next;
	int64		max_id;
	int			len;
	char		key[FLEXIBLE_ARRAY_MEMBER];
} KeyVersion;

typedef struct WindowKey
{
	uint64		hash;			/* the hash table's key */
	KeyVersion *keys;
} WindowKey;

/* A window's keys: none read yet; need_log when the log's list is needed at once. */
void
MonkWindowKeysInit(MonkWindowKeys *wk, MemoryContext parent, bool need_log)
{
	memset(wk, 0, sizeof(*wk));
	wk->parent = parent;
	wk->need_log = need_log;
}

/*
 * The entry of one key in the table (made at the first key, in a context of
 * its own), with max_id -1 when the key was not there yet.
 */
static KeyVersion *
SeenKey(MonkWindowKeys *wk, uint64 hash, const char *key, int len)
{
	bool		found;
	WindowKey  *k;
	KeyVersion *v;

	if (wk->seen == NULL)
	{
		HASHCTL		ctl;

		wk->cxt = AllocSetContextCreate(wk->parent, "monk window keys", ALLOCSET_DEFAULT_SIZES);
		memset(&ctl, 0, sizeof(ctl));
		ctl.keysize = sizeof(uint64);
		ctl.entrysize = sizeof(WindowKey);
		ctl.hcxt = wk->cxt;
		wk->seen = hash_create("monk window keys", 1024, &ctl, HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	k = hash_search(wk->seen, &hash, HASH_ENTER, &found);
	if (!found)
		k->keys = NULL;
	for (v = k->keys; v != NULL; v = v->next)
	{
		if (v->len == len && memcmp(v->key, key, len) == 0)
			return v;
	}
	v = MemoryContextAlloc(wk->cxt, offsetof(KeyVersion, key) + len);
	v->len = len;
	memcpy(v->key, key, len);
	v->max_id = -1;
	v->next = k->keys;
	k->keys = v;
	return v;
}

/*
 * Has a newer version of this row's key been read in its window already (or,
 * once the window's repeated keys are known, is there one in the window)?
 * Only a row read after one with a higher id can be superseded by what was
 * read before it: once the table has been let go, the first such row asks
 * for the log's list (the caller reads it, calls MonkWindowKeysInLog and
 * reads the row again).
 */
MonkVerdict
MonkWindowKeysJudge(MonkWindowKeys *wk, uint64 hash, const MonkOutboxRow *row)
{
	KeyVersion *v;
	bool		in_order = row->id > wk->max_id_read;

	if (wk->in_log)
		return row->newest_id > row->id ? MONK_VERSION_SUPERSEDED : MONK_VERSION_NEWEST;
	if (wk->overflowed)
	{
		if (!in_order)
		{
			wk->need_log = true;
			return MONK_VERSION_ASK_LOG;
		}
		wk->max_id_read = row->id;
		return MONK_VERSION_NEWEST;
	}
	if (in_order)
		wk->max_id_read = row->id;
	v = SeenKey(wk, hash, row->key, row->key_len);
	if (v->max_id > row->id)
		return MONK_VERSION_SUPERSEDED;
	if (v->max_id < 0)
		wk->bytes += row->key_len;
	v->max_id = row->id;
	if (hash_get_num_entries(wk->seen) > MONK_WINDOW_KEYS || wk->bytes > MONK_WINDOW_KEY_BYTES)
	{
		MonkWindowKeysRelease(wk);
		wk->overflowed = true;
	}
	return MONK_VERSION_NEWEST;
}

/* The log's list of the window's repeated keys is what the reads join now. */
void
MonkWindowKeysInLog(MonkWindowKeys *wk)
{
	MonkWindowKeysRelease(wk);
	wk->in_log = true;
	wk->need_log = false;
}

/* Let the table in memory go (the window is read, or too large for it). */
void
MonkWindowKeysRelease(MonkWindowKeys *wk)
{
	if (wk->cxt != NULL)
		MemoryContextDelete(wk->cxt);
	wk->cxt = NULL;
	wk->seen = NULL;
	wk->bytes = 0;
}
