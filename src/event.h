/*
 * event.h
 *		One usage event: validation against the rules of the Events API and
 *		rendering as the JSON the API receives.
 */
#ifndef MONK_EVENT_H
#define MONK_EVENT_H

#include "lib/stringinfo.h"
#include "utils/jsonb.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

/* A usage event as given by a caller; NULL pointers are absent fields. */
typedef struct MonkEvent
{
	const char *event_name;
	const char *external_customer_id;
	const pg_uuid_t *customer_id;
	Jsonb	   *properties;
	bool		has_timestamp;
	TimestampTz timestamp;
	const char *idempotency_key;
	bool		api_names;		/* name fields as the API does in errors */
} MonkEvent;

/* Why an event is invalid: the field and the message, as for an ERROR. */
typedef struct MonkEventError
{
	const char *field;
	char	   *message;
	char	   *detail;
	char	   *hint;
} MonkEventError;

/* How far in the future an event's timestamp may be (the API's rule). */
#define MONK_MAX_FUTURE_USECS ((int64) 3600 * USECS_PER_SEC)

extern bool MonkEventCheck(const MonkEvent *ev, TimestampTz now, MonkEventError *err);
extern bool MonkEventFromJsonb(Jsonb *jb, MonkEvent *ev, MonkEventError *err);
extern void MonkEventRaise(const MonkEventError *err) pg_attribute_noreturn();
extern void MonkEventRender(StringInfo buf, const MonkEvent *ev, const char *key);
extern void MonkEscapeJson(StringInfo buf, const char *s, int len);
extern void MonkRenderTimestamp(StringInfo buf, TimestampTz ts);

#endif
