/*
 * delivery.h
 *		The delivery policy: what an answer of the Events API means, how long
 *		to back off, the circuit breaker and its states, and what delivering
 *		counts.
 */
#ifndef MONK_DELIVERY_H
#define MONK_DELIVERY_H

#include "datatype/timestamp.h"

/* The states of the circuit breaker. */
typedef enum MonkCircuitState
{
	MONK_CIRCUIT_CLOSED = 0,
	MONK_CIRCUIT_OPEN,
	MONK_CIRCUIT_HALF_OPEN
} MonkCircuitState;

/* What delivering counts (the figures behind monk.status). */
typedef enum MonkCounter
{
	MONK_EVENTS_SENT = 0,
	MONK_EVENTS_FAILED,			/* dead-lettered */
	MONK_EVENTS_RETRIED,		/* events in requests that will be retried */
	MONK_REQUESTS_2XX,
	MONK_REQUESTS_4XX,
	MONK_REQUESTS_5XX,
	MONK_REQUESTS_FAILED,		/* no HTTP answer: timeout, connection error */
	MONK_REQUESTS_OTHER,		/* answers of another class: 1xx, 3xx */
	MONK_NUM_COUNTERS
} MonkCounter;

/* The longest Retry-After honoured. */
#define MONK_MAX_RETRY_AFTER_MS (3600L * 1000)

typedef enum MonkOutcome
{
	MONK_OUTCOME_ACCEPTED,		/* the documented acceptance (202 for a
								 * batch): the events are in */
	MONK_OUTCOME_RETRY,			/* 408, 429, 5xx, none: retry later */
	MONK_OUTCOME_SPLIT,			/* 400, 413, 422: refused events: bisect */
	MONK_OUTCOME_AUTH,			/* 401, 403: configuration error: pause */
	MONK_OUTCOME_UNEXPECTED		/* any other answer (a 200 page of another
								 * server, a redirect): nothing is settled,
								 * retried later */
} MonkOutcome;

/* The API's documented acceptance of POST /v1/events/batch (the bulk guide). */
#define MONK_BATCH_ACCEPTED 202
/* ... and of the reads (GET /v1/events, POST /v1/usage/cost) */
#define MONK_READ_OK 200

typedef struct MonkCircuit
{
	int			state;			/* MonkCircuitState */
	int			consecutive_failures;
	TimestampTz open_until;
	bool		probe_in_flight;
} MonkCircuit;

extern MonkOutcome MonkClassify(long status, long accepted);
extern long MonkBackoffMs(int attempt, long retry_after_ms);
extern bool MonkCircuitAllows(MonkCircuit *circuit, TimestampTz now, long *wait_ms);
extern void MonkCircuitStarted(MonkCircuit *circuit);
extern void MonkCircuitRecord(MonkCircuit *circuit, bool success, TimestampTz now);
extern const char *MonkCircuitName(int circuit);

#endif
