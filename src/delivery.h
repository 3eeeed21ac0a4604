/*
 * delivery.h
 *		The delivery policy: what an answer of the Events API means, how long
 *		to back off, and the circuit breaker.
 */
#ifndef MONK_DELIVERY_H
#define MONK_DELIVERY_H

#include "datatype/timestamp.h"

/* The longest Retry-After honoured. */
#define MONK_MAX_RETRY_AFTER_MS (3600L * 1000)

typedef enum MonkOutcome
{
	MONK_OUTCOME_ACCEPTED,		/* 2xx: the events are in */
	MONK_OUTCOME_RETRY,			/* 408, 429, 5xx, no answer, other: try again later */
	MONK_OUTCOME_SPLIT,			/* 400, 422, 413: bad events or too large: bisect */
	MONK_OUTCOME_AUTH			/* 401, 403: configuration error: pause */
} MonkOutcome;

typedef struct MonkCircuit
{
	int			state;			/* MonkCircuitState */
	int			consecutive_failures;
	TimestampTz open_until;
	bool		probe_in_flight;
} MonkCircuit;

extern MonkOutcome MonkClassify(long status);
extern long MonkBackoffMs(int attempt, long retry_after_ms);
extern bool MonkCircuitAllows(MonkCircuit *circuit, TimestampTz now, long *wait_ms);
extern void MonkCircuitStarted(MonkCircuit *circuit);
extern void MonkCircuitRecord(MonkCircuit *circuit, bool success, TimestampTz now);

#endif
