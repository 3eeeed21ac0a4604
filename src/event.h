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
 * How error messages name an event's fields: monk_send's arguments
 * (MonkNamesArgs), the API's fields (MonkNamesApi), a source's columns
 * (MonkNamesColumns), or the columns a monk_capture trigger maps.
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
	const MonkFieldNames *names;	/* how errors name the fields (NULL:
									 * MonkNamesArgs) */
	const char *properties_json;	/* instead of properties: already checked
									 * and rendered as JSON */
} MonkEvent;

extern const MonkFieldNames MonkNamesArgs;
extern const MonkFieldNames MonkNamesApi;
extern const MonkFieldNames MonkNamesColumns;

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

extern bool MonkEventFail(MonkEventError *err, const char *field, const char *message,
						  char *detail, const char *hint);
extern bool MonkEventCheck(const MonkEvent *ev, TimestampTz now, MonkEventError *err);
extern bool MonkEventFromJsonb(Jsonb *jb, MonkEvent *ev, MonkEventError *err);
pg_noreturn extern void MonkEventRaise(const MonkEventError *err);
extern bool MonkTimestampInIsoRange(TimestampTz ts);
extern bool MonkNumericFitsApi(Numeric num, char **text);
extern char *MonkNumericRefusal(const char *text);
extern bool MonkEventRender(StringInfo buf, const MonkEvent *ev, const char *key, int limit);
extern bool MonkEventFits(int len, MonkEventError *err);
extern void MonkEventCheckSize(int len);
extern void MonkEventCheckBytes(const char *json, int len);
extern bool MonkParseIso8601(const char *s, TimestampTz *out, const char **why);
extern bool MonkParseUuid(const char *s, pg_uuid_t *out);
extern void MonkEscapeJson(StringInfo buf, const char *s, int len);
extern bool MonkEscapeJsonWithin(StringInfo buf, const char *s, int len, int limit);
extern void MonkRenderTimestamp(StringInfo buf, TimestampTz ts);

#endif
