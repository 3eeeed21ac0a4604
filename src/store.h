/*
 * store.h
 *		monk's tables besides the outbox: the dead letters and the export
 *		cursors (monk.dead_letter, monk.sync_state).
 */
#ifndef MONK_STORE_H
#define MONK_STORE_H

#include "datatype/timestamp.h"

/*
 * An event refused for good: by the Events API (source "outbox", or an
 * export's cursor), or an export's row that is not a valid event.
 */
typedef struct MonkDeadLetter
{
	const char *source;			/* "outbox", or the export's cursor */
	int64		source_id;		/* the outbox id, or the row's id */
	const char *key;
	int			key_len;		/* 0: key is NUL-terminated */
	const char *event;
	int			event_len;		/* 0: event is NUL-terminated */
	bool		event_utf8;		/* the event is in UTF-8 (the worker's, as
								 * sent), not in the database's encoding */
	TimestampTz queued_at;		/* 0: not queued (an export's row) */
	bool		has_status;		/* the API answered (status) */
	long		status;
	const char *error;
	const char *response;		/* the API's answer, or NULL */
	int			attempts;
} MonkDeadLetter;

/* Statements run as the owner of monk's tables; the caller has connected SPI. */
extern void MonkDeadLetterInsert(const MonkDeadLetter *dl);
extern bool MonkDeadLettersOfOutbox(void);
extern void MonkDeadLetterSupersede(const char *const *keys, const int *key_lens, const int64 *ids, int n);

/* Where an export's cursor stands. */
typedef struct MonkCursorPos
{
	bool		started;		/* false: before every id (a new cursor) */
	int64		last_id;		/* rows with a higher id are still to be sent */
	int64	   *pending;		/* ids at or below last_id to read again */
	int			npending;
	bool		legacy_keys;	/* made under 0.3: 0.3's default keys */
} MonkCursorPos;

extern bool MonkSourceLegacyKeys(const char *source);
extern void MonkCursorLock(const char *cursor, const char *source, MonkCursorPos *pos);
extern void MonkCursorSave(const char *cursor, const MonkCursorPos *pos, int64 sent, int64 failed,
						   const char *error);

#endif
