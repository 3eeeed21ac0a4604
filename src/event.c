/*
 * event.c
 *		Validation of one usage event and its rendering as JSON.
 *
 * The rules are those of the Monk Events API (seeds/002): an event name, a
 * customer (Monk UUID or external id), properties whose values are strings,
 * numbers or booleans, a timestamp at most one hour ahead, and a non-empty
 * idempotency key when one is given.  Checking returns a MonkEventError
 * instead of raising, so that monk_send can raise it as an ERROR while a bulk
 * export can dead-letter the row and go on.  Rendering produces exactly the
 * bytes the worker sends: camelCase fields, ISO 8601 UTC timestamps with a
 * "Z", numbers as written, strings escaped as JSON.  This file knows nothing
 * of SPI or of HTTP.
 */
#include "postgres.h"

#include <ctype.h>
#include <math.h>

#include "common/shortest_dec.h"
#include "datatype/timestamp.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/numeric.h"

#include "event.h"
#include "settings.h"

/* The fields of an event, named as the API names them. */
#define F_EVENT_NAME	"eventName"
#define F_CUSTOMER_ID	"customerId"
#define F_EXTERNAL_ID	"externalCustomerId"
#define F_PROPERTIES	"properties"
#define F_TIMESTAMP		"timestamp"
#define F_KEY			"idempotencyKey"

static const char hex_digits[] = "0123456789abcdef";

/* monk_send's arguments: event_name, event_time. */
const MonkFieldNames MonkNamesArgs = {
	.event_name = "event_name",.external_customer_id = "external_customer_id",
	.customer_id = "customer_id",.timestamp = "event_time",.idempotency_key = "idempotency_key"
};

/* The API's fields (the jsonb form of monk_send). */
const MonkFieldNames MonkNamesApi = {
	.event_name = F_EVENT_NAME,.external_customer_id = F_EXTERNAL_ID,
	.customer_id = F_CUSTOMER_ID,.timestamp = F_TIMESTAMP,.idempotency_key = F_KEY
};

/* The columns of an export's source. */
const MonkFieldNames MonkNamesColumns = {
	.event_name = "event_name",.external_customer_id = "external_customer_id",
	.customer_id = "customer_id",.timestamp = F_TIMESTAMP,.idempotency_key = "idempotency_key"
};

/*
 * Why an event is invalid: fill *err (the field as the API names it, or
 * NULL) and return false.  The one way an error is filled.
 */
bool
MonkEventFail(MonkEventError *err, const char *field, const char *message,
			  char *detail, const char *hint)
{
	err->field = field;
	err->message = pstrdup(message);
	err->detail = detail;
	err->hint = hint ? pstrdup(hint) : NULL;
	return false;
}

/*
 * Append s (len bytes) as a JSON string literal: quotes, backslashes and
 * control characters escaped, every other byte (UTF-8 included) as it is.
 */
void
MonkEscapeJson(StringInfo buf, const char *s, int len)
{
	int			start = 0;

	enlargeStringInfo(buf, len + 2);
	appendStringInfoChar(buf, '"');
	for (int i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		appendBinaryStringInfo(buf, s + start, i - start);
		start = i + 1;
		switch (c)
		{
			case '"':
				appendStringInfoString(buf, "\\\"");
				break;
			case '\\':
				appendStringInfoString(buf, "\\\\");
				break;
			case '\n':
				appendStringInfoString(buf, "\\n");
				break;
			case '\r':
				appendStringInfoString(buf, "\\r");
				break;
			case '\t':
				appendStringInfoString(buf, "\\t");
				break;
			case '\b':
				appendStringInfoString(buf, "\\b");
				break;
			case '\f':
				appendStringInfoString(buf, "\\f");
				break;
			default:
				appendStringInfoString(buf, "\\u00");
				appendStringInfoChar(buf, hex_digits[c >> 4]);
				appendStringInfoChar(buf, hex_digits[c & 0x0f]);
				break;
		}
	}
	appendBinaryStringInfo(buf, s + start, len - start);
	appendStringInfoChar(buf, '"');
}

/*
 * MonkEscapeJson, unless the literal would take buf past limit bytes (a
 * lower bound: s unescaped), in which case nothing is appended and false is
 * returned.  So a value far larger than an event may be is refused before it
 * is copied; what is appended is at most six times limit.
 */
bool
MonkEscapeJsonWithin(StringInfo buf, const char *s, int len, int limit)
{
	if ((int64) buf->len + len + 2 > limit)
		return false;
	MonkEscapeJson(buf, s, len);
	return true;
}

/* A JSON string literal of s, for error details. */
static char *
Quoted(const char *s)
{
	StringInfoData buf;

	initStringInfo(&buf);
	MonkEscapeJson(&buf, s, strlen(s));
	return buf.data;
}

static const char *
MonkJsonbTypeName(enum jbvType type, JsonbContainer *container)
{
	switch (type)
	{
		case jbvNull:
			return "null";
		case jbvString:
			return "string";
		case jbvNumeric:
			return "number";
		case jbvBool:
			return "boolean";
		case jbvBinary:
			return (container && JsonContainerIsArray(container)) ? "array" : "object";
		default:
			return "value";
	}
}

/*
 * Can a JSON parser of the API hold this number without changing it?  A
 * 64-bit integer (signed or unsigned), or a number that a double-precision
 * round trip gives back unchanged (0.1, 1.5e-300): those are what JSON
 * parsers keep exactly.  Anything else (2^64, 30 significant digits) would
 * be billed as another number, so it is refused rather than sent.  *text,
 * when given, receives the number as written (numeric_out), either way.
 */
bool
MonkNumericFitsApi(Numeric num, char **text)
{
	char	   *s = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(num)));
	char		shortest[DOUBLE_SHORTEST_DECIMAL_LEN + 1];
	char	   *end;
	double		d;
	Datum		back;

	if (text)
		*text = s;
	if (strchr(s, '.') == NULL)
	{
		errno = 0;
		if (s[0] == '-')
			(void) strtoll(s, &end, 10);
		else
			(void) strtoull(s, &end, 10);
		if (errno == 0 && *end == '\0')
			return true;
	}
	errno = 0;
	d = strtod(s, &end);
	if (*end != '\0' || isinf(d))
		return false;
	double_to_shortest_decimal_buf(d, shortest);
	back = DirectFunctionCall3(numeric_in, CStringGetDatum(shortest),
							   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
	return DatumGetInt32(DirectFunctionCall2(numeric_cmp, NumericGetDatum(num), back)) == 0;
}

/*
 * The DETAIL of a refused number, given its text (from MonkNumericFitsApi):
 * the number itself, or its start when it is long.
 */
char *
MonkNumericRefusal(const char *text)
{
	int			len = strlen(text);

	if (len <= 60)
		return psprintf("The value is %s; only 64-bit integers and numbers that survive a double-precision round trip arrive unchanged.", text);
	return psprintf("The value, %.40s... (%d characters), is neither a 64-bit integer nor a number that survives a double-precision round trip.", text, len);
}

/*
 * Check the properties object: each value a string, number, boolean or null
 * (nulls are dropped when rendered), numbers the API can hold exactly.
 */
static bool
CheckProperties(Jsonb *props, MonkEventError *err)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;
	char	   *num;

	if (!JB_ROOT_IS_OBJECT(props) || JB_ROOT_IS_SCALAR(props))
		return MonkEventFail(err, F_PROPERTIES, "properties must be a JSON object",
							 psprintf("The value is a JSON %s.",
									  JB_ROOT_IS_SCALAR(props) ? "scalar" : "array"),
							 "Pass an object such as {\"tokens\": 42}, or NULL.");

	it = JsonbIteratorInit(&props->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			key = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE && v.type == jbvBinary)
			return MonkEventFail(err, F_PROPERTIES,
								 psprintf("property %s of properties must be a string, number or boolean",
										  Quoted(key)),
								 psprintf("The value is a JSON %s; nested objects and arrays are not supported.",
										  MonkJsonbTypeName(v.type, v.val.binary.data)),
								 "Flatten the value into separate properties, or send it as a string.");
		else if (tok == WJB_VALUE && v.type == jbvNumeric && !MonkNumericFitsApi(v.val.numeric, &num))
			return MonkEventFail(err, F_PROPERTIES,
								 psprintf("property %s of properties is a number the Events API cannot hold exactly",
										  Quoted(key)),
								 MonkNumericRefusal(num), "Round it, or send it as a string.");
	}
	return true;
}

/* Is the timestamp representable in ISO 8601 (years 1 to 9999)? */
bool
MonkTimestampInIsoRange(TimestampTz ts)
{
	struct pg_tm tm;
	fsec_t		fsec;

	if (TIMESTAMP_NOT_FINITE(ts))
		return false;
	if (timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0)
		return false;
	return tm.tm_year >= 1 && tm.tm_year <= 9999;
}

/*
 * Check an event against the rules of the API.  "now" is the database clock,
 * against which the one-hour limit on future timestamps is measured.
 */
bool
MonkEventCheck(const MonkEvent *ev, TimestampTz now, MonkEventError *err)
{
	/* name the fields as the caller named them */
	const MonkFieldNames *names = ev->names ? ev->names : &MonkNamesArgs;
	const char *n_name = names->event_name;
	const char *n_ext = names->external_customer_id;
	const char *n_cust = names->customer_id;
	const char *n_key = names->idempotency_key;
	const char *n_ts = names->timestamp;

	if (ev->event_name == NULL)
		return MonkEventFail(err, F_EVENT_NAME, psprintf("%s is required", n_name), NULL,
							 "Name the kind of usage, for example 'api_call'.");
	if (ev->event_name[0] == '\0')
		return MonkEventFail(err, F_EVENT_NAME, psprintf("%s must not be empty", n_name), NULL,
							 "Name the kind of usage, for example 'api_call'.");

	if (ev->external_customer_id != NULL && ev->external_customer_id[0] == '\0')
		return MonkEventFail(err, F_EXTERNAL_ID, psprintf("%s must not be empty", n_ext), NULL,
							 psprintf("Pass your identifier of the customer, or leave %s out and pass %s.",
									  n_ext, n_cust));
	if (ev->external_customer_id == NULL && ev->customer_id == NULL)
		return MonkEventFail(err, F_CUSTOMER_ID,
							 psprintf("an event needs %s or %s", n_cust, n_ext), NULL,
							 psprintf("Pass Monk's customer UUID as %s, or your own identifier as %s.",
									  n_cust, n_ext));

	if (ev->properties != NULL && !CheckProperties(ev->properties, err))
		return false;

	if (ev->has_timestamp)
	{
		if (!MonkTimestampInIsoRange(ev->timestamp))
			return MonkEventFail(err, F_TIMESTAMP, psprintf("%s is out of range", n_ts),
								 pstrdup("Timestamps must be finite and between the years 1 and 9999."),
								 NULL);
		if (ev->timestamp > now + MONK_MAX_FUTURE_USECS)
		{
			StringInfoData d;

			initStringInfo(&d);
			appendStringInfoString(&d, "The timestamp is ");
			MonkRenderTimestamp(&d, ev->timestamp);
			appendStringInfoString(&d, "; the database clock reads ");
			MonkRenderTimestamp(&d, now);
			appendStringInfoChar(&d, '.');
			return MonkEventFail(err, F_TIMESTAMP,
								 psprintf("%s must not be more than 1 hour in the future", n_ts),
								 d.data,
								 "The Events API refuses events more than one hour ahead; check the clock of the system that produced the event.");
		}
	}

	if (ev->idempotency_key != NULL && ev->idempotency_key[0] == '\0')
		return MonkEventFail(err, F_KEY, psprintf("%s must not be empty", n_key), NULL,
							 psprintf("Leave %s out to have a key assigned.", n_key));
	return true;
}

/* Raise an invalid event as an ERROR with SQLSTATE 22023. */
void
MonkEventRaise(const MonkEventError *err)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid event: %s", err->message),
			 err->detail ? errdetail_internal("%s", err->detail) : 0,
			 err->hint ? errhint("%s", err->hint) : 0));
}

/* Parse exactly n decimal digits. */
static bool
Digits(const char **p, int n, int *out)
{
	int			v = 0;

	for (int i = 0; i < n; i++)
	{
		if (!isdigit((unsigned char) (*p)[i]))
			return false;
		v = v * 10 + ((*p)[i] - '0');
	}
	*p += n;
	*out = v;
	return true;
}

/*
 * Parse an ISO 8601 / RFC 3339 date-time with a UTC offset:
 * YYYY-MM-DDTHH:MM[:SS[.fraction]](Z|+HH:MM|-HH:MM|+HHMM|+HH).
 * A time without an offset is refused: its instant would be ambiguous.
 */
bool
MonkParseIso8601(const char *s, TimestampTz *out, const char **why)
{
	const char *p = s;
	struct pg_tm tm;
	int			fsec = 0;
	int			tz = 0;
	Timestamp	ts;

	memset(&tm, 0, sizeof(tm));
	*why = "Use the form 2026-03-06T14:30:00Z.";
	if (!Digits(&p, 4, &tm.tm_year) || *p++ != '-' ||
		!Digits(&p, 2, &tm.tm_mon) || *p++ != '-' ||
		!Digits(&p, 2, &tm.tm_mday))
		return false;
	if (*p != 'T' && *p != 't' && *p != ' ')
	{
		if (*p == '\0')
			*why = "A date alone is not enough: give the time and the offset, as in 2026-03-06T00:00:00Z.";
		return false;
	}
	p++;
	if (!Digits(&p, 2, &tm.tm_hour) || *p++ != ':' || !Digits(&p, 2, &tm.tm_min))
		return false;
	if (*p == ':')
	{
		p++;
		if (!Digits(&p, 2, &tm.tm_sec))
			return false;
		if (*p == '.' || *p == ',')
		{
			int			scale = 100000;

			p++;
			if (!isdigit((unsigned char) *p))
				return false;
			while (isdigit((unsigned char) *p))
			{
				fsec += (*p - '0') * scale;
				scale /= 10;
				p++;
			}
		}
	}
	if (*p == 'Z' || *p == 'z')
		p++;
	else if (*p == '+' || *p == '-')
	{
		int			sign = (*p == '+') ? -1 : 1;	/* PostgreSQL counts west */
		int			hh = 0,
					mm = 0;

		p++;
		if (!Digits(&p, 2, &hh))
			return false;
		if (*p == ':')
			p++;
		if (isdigit((unsigned char) *p) && !Digits(&p, 2, &mm))
			return false;
		if (hh > 23 || mm > 59)
			return false;
		tz = sign * (hh * 3600 + mm * 60);
	}
	else
	{
		if (*p == '\0')
			*why = "Add the UTC offset: Z for UTC, or +HH:MM.";
		return false;
	}
	if (*p != '\0')
		return false;

	*why = "The date or the time does not exist.";
	if (tm.tm_year < 1 || tm.tm_mon < 1 || tm.tm_mon > 12 || tm.tm_mday < 1 ||
		tm.tm_mday > day_tab[isleap(tm.tm_year)][tm.tm_mon - 1] ||
		tm.tm_hour > 23 || tm.tm_min > 59 || tm.tm_sec > 59)
		return false;
	if (tm2timestamp(&tm, fsec, &tz, &ts) != 0)
		return false;
	*out = (TimestampTz) ts;
	return true;
}

/* Parse a UUID in its usual 8-4-4-4-12 form (or 32 hex digits). */
bool
MonkParseUuid(const char *s, pg_uuid_t *out)
{
	int			n = 0;

	for (const char *p = s; *p; p++)
	{
		int			hi,
					lo;

		if (*p == '-' && (n == 4 || n == 6 || n == 8 || n == 10) && strlen(s) == 36)
			continue;
		if (n >= UUID_LEN || !isxdigit((unsigned char) p[0]) || !isxdigit((unsigned char) p[1]))
			return false;
		hi = isdigit((unsigned char) p[0]) ? p[0] - '0' : tolower((unsigned char) p[0]) - 'a' + 10;
		lo = isdigit((unsigned char) p[1]) ? p[1] - '0' : tolower((unsigned char) p[1]) - 'a' + 10;
		out->data[n++] = (unsigned char) (hi * 16 + lo);
		p++;
	}
	return n == UUID_LEN && (strlen(s) == 36 || strlen(s) == 32);
}

/* A string field of the jsonb form, or a type error. */
static bool
JsonbString(JsonbValue *v, const char *field, const char **out, MonkEventError *err)
{
	if (v->type == jbvNull)
	{
		*out = NULL;
		return true;
	}
	if (v->type != jbvString)
		return MonkEventFail(err, field, psprintf("%s must be a JSON string", field),
							 psprintf("The value is a JSON %s.",
									  MonkJsonbTypeName(v->type, v->type == jbvBinary ? v->val.binary.data : NULL)),
							 NULL);
	*out = pnstrdup(v->val.string.val, v->val.string.len);
	return true;
}

/* customerId: a UUID in a JSON string (null: absent). */
static bool
ReadCustomerId(JsonbValue *v, MonkEvent *ev, MonkEventError *err)
{
	const char *s;
	pg_uuid_t  *uuid;

	if (!JsonbString(v, F_CUSTOMER_ID, &s, err))
		return false;
	if (s == NULL)
		return true;
	uuid = palloc(sizeof(pg_uuid_t));
	if (!MonkParseUuid(s, uuid))
		return MonkEventFail(err, F_CUSTOMER_ID, "customerId must be a UUID",
							 psprintf("The value is %s.", Quoted(s)),
							 "customerId is Monk's customer UUID; use externalCustomerId for your own identifier.");
	ev->customer_id = uuid;
	return true;
}

/* timestamp: an ISO 8601 date and time in a JSON string (null: absent). */
static bool
ReadTimestamp(JsonbValue *v, MonkEvent *ev, MonkEventError *err)
{
	const char *s;
	const char *why;

	if (!JsonbString(v, F_TIMESTAMP, &s, err))
		return false;
	if (s == NULL)
		return true;
	if (!MonkParseIso8601(s, &ev->timestamp, &why))
		return MonkEventFail(err, F_TIMESTAMP, "timestamp must be an ISO 8601 date and time",
							 psprintf("The value is %s.", Quoted(s)), why);
	ev->has_timestamp = true;
	return true;
}

/* properties: a JSON object (null: none); its values are checked later. */
static bool
ReadProperties(JsonbValue *v, MonkEvent *ev, MonkEventError *err)
{
	if (v->type == jbvNull)
		return true;
	if (v->type != jbvBinary || !JsonContainerIsObject(v->val.binary.data))
		return MonkEventFail(err, F_PROPERTIES, "properties must be a JSON object",
							 psprintf("The value is a JSON %s.",
									  MonkJsonbTypeName(v->type, v->type == jbvBinary ? v->val.binary.data : NULL)),
							 "Pass an object such as {\"tokens\": 42}.");
	ev->properties = JsonbValueToJsonb(v);
	return true;
}

/* One field of an event object, by its API name. */
static bool
ReadField(const char *key, JsonbValue *v, MonkEvent *ev, MonkEventError *err)
{
	if (strcmp(key, F_EVENT_NAME) == 0)
		return JsonbString(v, F_EVENT_NAME, &ev->event_name, err);
	if (strcmp(key, F_EXTERNAL_ID) == 0)
		return JsonbString(v, F_EXTERNAL_ID, &ev->external_customer_id, err);
	if (strcmp(key, F_KEY) == 0)
		return JsonbString(v, F_KEY, &ev->idempotency_key, err);
	if (strcmp(key, F_CUSTOMER_ID) == 0)
		return ReadCustomerId(v, ev, err);
	if (strcmp(key, F_TIMESTAMP) == 0)
		return ReadTimestamp(v, ev, err);
	if (strcmp(key, F_PROPERTIES) == 0)
		return ReadProperties(v, ev, err);
	return MonkEventFail(err, key, psprintf("unknown field %s in event", Quoted(key)), NULL,
						 "The fields of an event are eventName, externalCustomerId, customerId, properties, timestamp and idempotencyKey.");
}

/*
 * Read an event given in the API's own camelCase shape.  Types are checked
 * here (with errors naming the API's field names); the rules of the API are
 * checked by MonkEventCheck afterwards.
 */
bool
MonkEventFromJsonb(Jsonb *jb, MonkEvent *ev, MonkEventError *err)
{
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *key = NULL;

	memset(ev, 0, sizeof(*ev));
	ev->names = &MonkNamesApi;
	if (!JB_ROOT_IS_OBJECT(jb) || JB_ROOT_IS_SCALAR(jb))
		return MonkEventFail(err, "event", "event must be a JSON object",
							 psprintf("The value is a JSON %s.", JB_ROOT_IS_SCALAR(jb) ? "scalar" : "array"),
							 "Pass an object such as {\"eventName\": \"api_call\", \"externalCustomerId\": \"cus_1\"}.");

	it = JsonbIteratorInit(&jb->root);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			key = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE && !ReadField(key, &v, ev, err))
			return false;
	}
	return true;
}

/*
 * Append a timestamp as ISO 8601 in UTC: 2026-03-06T14:30:00Z, or with
 * .ffffff.  The last one written is kept: the events of one statement or
 * transaction often share it.
 */
void
MonkRenderTimestamp(StringInfo buf, TimestampTz ts)
{
	static TimestampTz last = DT_NOBEGIN;
	static char last_text[40];
	struct pg_tm tm;
	fsec_t		fsec;
	char		frac[8];

	if (ts == last)
	{
		appendStringInfoString(buf, last_text);
		return;
	}
	if (TIMESTAMP_NOT_FINITE(ts) || timestamp2tm(ts, NULL, &tm, &fsec, NULL, NULL) != 0)
		elog(ERROR, "timestamp out of range");

	frac[0] = '\0';
	if (fsec != 0)
	{
		int			len;

		snprintf(frac, sizeof(frac), ".%06d", (int) fsec);
		len = strlen(frac);
		while (frac[len - 1] == '0')
			frac[--len] = '\0';
	}
	snprintf(last_text, sizeof(last_text), "%04d-%02d-%02dT%02d:%02d:%02d%sZ",
			 tm.tm_year, tm.tm_mon, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
	last = ts;
	appendStringInfoString(buf, last_text);
}

/*
 * Append the properties object, without the keys whose value is null; false
 * when it would pass limit bytes (MonkEscapeJsonWithin).
 */
static bool
RenderProperties(StringInfo buf, Jsonb *props, int limit)
{
	JsonbIterator *it = JsonbIteratorInit(&props->root);
	JsonbValue	v;
	JsonbIteratorToken tok;
	JsonbValue	key = {0};
	bool		first = true;

	appendStringInfoChar(buf, '{');
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			key = v;
			continue;
		}
		if (tok != WJB_VALUE || v.type == jbvNull)
			continue;
		if (!first)
			appendStringInfoChar(buf, ',');
		first = false;
		if (!MonkEscapeJsonWithin(buf, key.val.string.val, key.val.string.len, limit))
			return false;
		appendStringInfoChar(buf, ':');
		switch (v.type)
		{
			case jbvString:
				if (!MonkEscapeJsonWithin(buf, v.val.string.val, v.val.string.len, limit))
					return false;
				break;
			case jbvNumeric:
				appendStringInfoString(buf,
									   DatumGetCString(DirectFunctionCall1(numeric_out,
																		   NumericGetDatum(v.val.numeric))));
				break;
			case jbvBool:
				appendStringInfoString(buf, v.val.boolean ? "true" : "false");
				break;
			default:
				elog(ERROR, "unexpected property value of type %d", (int) v.type);
		}
	}
	appendStringInfoChar(buf, '}');
	return true;
}

/*
 * Append the event as the API's JSON object, with the given idempotency key
 * (the event's own, or the one assigned when it was queued).  The event must
 * have passed MonkEventCheck.  With a limit (> 0), the rendering stops,
 * returning false, as soon as its properties would take the event past limit
 * bytes: a huge property is never copied, let alone escaped.
 */
bool
MonkEventRender(StringInfo buf, const MonkEvent *ev, const char *key, int limit)
{
	if (limit <= 0)
		limit = PG_INT32_MAX;
	appendStringInfoString(buf, "{\"" F_EVENT_NAME "\":");
	MonkEscapeJson(buf, ev->event_name, strlen(ev->event_name));
	if (ev->customer_id)
	{
		appendStringInfoString(buf, ",\"" F_CUSTOMER_ID "\":\"");
		for (int i = 0; i < UUID_LEN; i++)
		{
			if (i == 4 || i == 6 || i == 8 || i == 10)
				appendStringInfoChar(buf, '-');
			appendStringInfoChar(buf, hex_digits[ev->customer_id->data[i] >> 4]);
			appendStringInfoChar(buf, hex_digits[ev->customer_id->data[i] & 0x0f]);
		}
		appendStringInfoChar(buf, '"');
	}
	if (ev->external_customer_id)
	{
		appendStringInfoString(buf, ",\"" F_EXTERNAL_ID "\":");
		MonkEscapeJson(buf, ev->external_customer_id, strlen(ev->external_customer_id));
	}
	if (ev->has_timestamp)
	{
		appendStringInfoString(buf, ",\"" F_TIMESTAMP "\":\"");
		MonkRenderTimestamp(buf, ev->timestamp);
		appendStringInfoChar(buf, '"');
	}
	if (key)
	{
		appendStringInfoString(buf, ",\"" F_KEY "\":");
		MonkEscapeJson(buf, key, strlen(key));
	}
	if (ev->properties_json)
	{
		appendStringInfoString(buf, ",\"" F_PROPERTIES "\":");
		appendStringInfoString(buf, ev->properties_json);
	}
	else if (ev->properties)
	{
		appendStringInfoString(buf, ",\"" F_PROPERTIES "\":");
		if (!RenderProperties(buf, ev->properties, limit))
			return false;
	}
	appendStringInfoChar(buf, '}');
	return true;
}

/*
 * Does a rendered event of len bytes fit monk.max_event_size?  If not,
 * *err says why (for a dead letter).
 */
bool
MonkEventFits(int len, MonkEventError *err)
{
	int			max = MonkMaxEventBytes();

	if (len <= max)
		return true;
	return MonkEventFail(err, NULL, psprintf("the event is %d bytes, more than monk.max_event_size", len),
						 psprintf("monk.max_event_size allows %d bytes (at most monk.max_request_size less 64 bytes).", max),
						 "Send smaller properties, or raise monk.max_event_size.");
}

/*
 * The API reads UTF-8.  In a SQL_ASCII database text is bytes without an
 * encoding, and monk sends them as they are: an event that is not valid UTF-8
 * is refused when it is queued (22021).  In another encoding, an event with a
 * character that has no equivalent in UTF-8 is refused (22P05): the worker
 * could never send it.
 */
void
MonkEventCheckBytes(const char *json, int len)
{
	int			enc = GetDatabaseEncoding();

	if (enc == PG_UTF8)
		return;
	if (enc != PG_SQL_ASCII)
	{
		/* a character with no equivalent in UTF-8 is refused here (22P05) */
		char	   *utf8 = pg_server_to_any(json, len, PG_UTF8);

		if (utf8 != json)
			pfree(utf8);
		return;
	}
	if (pg_verify_mbstr(PG_UTF8, json, len, true))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_CHARACTER_NOT_IN_REPERTOIRE),
			 errmsg("invalid event: its text is not valid UTF-8"),
			 errdetail("The database's encoding is SQL_ASCII: monk sends its bytes as they are, and the Events API reads UTF-8."),
			 errhint("Store text in UTF-8, or convert it with convert_to()/convert_from() before queueing it.")));
}

/*
 * Refuse an event larger than monk.max_event_size (54000), when queueing it;
 * len -1: one whose rendering stopped past the limit.
 */
void
MonkEventCheckSize(int len)
{
	MonkEventError err;

	if (len < 0)
	{
		int			max = MonkMaxEventBytes();

		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("invalid event: the event is more than monk.max_event_size (%d bytes)", max),
				 errdetail("monk.max_event_size allows %d bytes (at most monk.max_request_size less 64 bytes).", max),
				 errhint("Send smaller properties, or raise monk.max_event_size.")));
	}
	if (MonkEventFits(len, &err))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
			 errmsg("invalid event: %s", err.message),
			 errdetail_internal("%s", err.detail),
			 errhint("%s", err.hint)));
}
