/*
 * delivery.c
 *		The delivery policy shared by the worker and the bulk export.
 *
 * How each answer of the Events API is treated (the bulk guide's rules: 5xx
 * and 429 are retried, bad data is never retried as is), exponential backoff
 * with full jitter that honours Retry-After, and a circuit breaker that stops
 * hammering an API that keeps failing.  Pure functions of their inputs and
 * the monk.* settings: no SPI, no curl.
 */
#include "postgres.h"

#include <math.h>

#include "common/pg_prng.h"
#include "utils/timestamp.h"

#include "delivery.h"
#include "settings.h"

/*
 * What an HTTP status (0: no answer at all) means for the request sent, whose
 * documented acceptance is "accepted" (202 for a batch, 200 for a GET): only
 * that settles anything.
 */
MonkOutcome
MonkClassify(long status, long accepted)
{
	if (status == accepted)
		return MONK_OUTCOME_ACCEPTED;
	if (status == 400 || status == 422 || status == 413)
		return MONK_OUTCOME_SPLIT;
	if (status == 401 || status == 403)
		return MONK_OUTCOME_AUTH;
	if (status == 0 || status == 408 || status == 429 || status >= 500)
		return MONK_OUTCOME_RETRY;
	/* another 2xx, 1xx, 3xx, another 4xx: never taken for delivered */
	return MONK_OUTCOME_UNEXPECTED;
}

/*
 * Delay before retry number "attempt" (1 for the first retry): full jitter,
 * a uniform draw from [0, min(cap, base * 2^(attempt-1))], but never less
 * than the server's Retry-After (itself capped at an hour, against absurd
 * values).
 */
long
MonkBackoffMs(int attempt, long retry_after_ms)
{
	double		ceiling = (double) monk_retry_base_delay * pow(2.0, Max(attempt - 1, 0));
	long		delay;

	if (ceiling > monk_retry_max_delay)
		ceiling = monk_retry_max_delay;
	delay = (long) (pg_prng_double(&pg_global_prng_state) * ceiling);
	if (retry_after_ms > delay)
		delay = Min(retry_after_ms, MONK_MAX_RETRY_AFTER_MS);
	return delay;
}

/*
 * May a request be sent now?  Closed: yes.  Open: not until open_until has
 * passed, then half-open.  Half-open: one probe at a time.  When no, *wait_ms
 * says how long until it may be (-1: until the probe completes).
 */
bool
MonkCircuitAllows(MonkCircuit *circuit, TimestampTz now, long *wait_ms)
{
	*wait_ms = 0;
	if (circuit->state == MONK_CIRCUIT_OPEN)
	{
		if (now < circuit->open_until)
		{
			*wait_ms = (long) ((circuit->open_until - now + 999) / 1000);
			return false;
		}
		circuit->state = MONK_CIRCUIT_HALF_OPEN;
		circuit->probe_in_flight = false;
	}
	if (circuit->state == MONK_CIRCUIT_HALF_OPEN && circuit->probe_in_flight)
	{
		*wait_ms = -1;
		return false;
	}
	return true;
}

/* A request was sent (in half-open state, it is the probe). */
void
MonkCircuitStarted(MonkCircuit *circuit)
{
	if (circuit->state == MONK_CIRCUIT_HALF_OPEN)
		circuit->probe_in_flight = true;
}

/* Record the outcome of a request: an answer of the API, or a failure. */
void
MonkCircuitRecord(MonkCircuit *circuit, bool success, TimestampTz now)
{
	if (success)
	{
		circuit->state = MONK_CIRCUIT_CLOSED;
		circuit->consecutive_failures = 0;
		circuit->probe_in_flight = false;
		return;
	}
	circuit->consecutive_failures++;
	if (circuit->state == MONK_CIRCUIT_HALF_OPEN ||
		circuit->consecutive_failures >= monk_circuit_failure_threshold)
	{
		circuit->state = MONK_CIRCUIT_OPEN;
		circuit->open_until = TimestampTzPlusMilliseconds(now, monk_circuit_open_time);
		circuit->probe_in_flight = false;
	}
}

/* The name monk.status gives a state of the circuit. */
const char *
MonkCircuitName(int circuit)
{
	switch (circuit)
	{
		case MONK_CIRCUIT_CLOSED:
			return "closed";
		case MONK_CIRCUIT_OPEN:
			return "open";
		case MONK_CIRCUIT_HALF_OPEN:
			return "half-open";
	}
	return "unknown";
}
