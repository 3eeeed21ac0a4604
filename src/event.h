/*
 * event.h
 *		One usage event: validation against the rules of the Events API and
 *		rendering as the JSON the API receives.
 */
#ifndef MONK_EVENT_H
#define MONK_EVENT_H

#include "lib/stringinfo.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"
#include "utils/uuid.h"

#include "compat.h"

/*
 * How error messages name an event's fields when the caller knows better
 * than MonkNaming (monk_capture names the columns they come from).
 */
typedef struct MonkFieldNames
{
	const char *event_name;
	const char *external_customer_id;
	const char *customer_id;
	const char *timestamp;
	const char *idempotency_key;
} MonkFieldNames;

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
	int			naming;			/* how errors name the fields: MonkNaming */
	const MonkFieldNames *names;	/* or, when set, these names */
	const char *properties_json;	/* instead of properties: already checked
									 * and rendered as JSON */
} MonkEvent;

/* How error messages name an event's fields. */
typedef enum MonkNaming
{
	MONK_NAMES_ARGS = 0,		/* monk_send's: event_name, event_time */
	MONK_NAMES_API,				/* the API's fields: eventName, timestamp */
	MONK_NAMES_COLUMNS			/* a source's columns: event_name, timestamp */
} MonkNaming;

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
pg_noreturn extern void MonkEventRaise(const MonkEventError *err);
extern bool MonkTimestampInIsoRange(TimestampTz ts);
extern bool MonkNumericFitsApi(Numeric num, char **text);
extern char *MonkNumericRefusal(const char *text);
extern void MonkEventRender(StringInfo buf, const MonkEvent *ev, const char *key);
extern bool MonkParseIso8601(const char *s, TimestampTz *out, const char **why);
extern bool MonkParseUuid(const char *s, pg_uuid_t *out);
extern void MonkEscapeJson(StringInfo buf, const char *s, int len);
extern void MonkRenderTimestamp(StringInfo buf, TimestampTz ts);

#endif
