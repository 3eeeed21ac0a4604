/*
 * sender.c
 *		Batches of events on their way to the Events API.
 *
 * Both the background worker and monk_batch_export hand chunks of rendered
 * events to a sender.  It sends them as POST /v1/events/batch requests, up
 * to monk.max_parallel_requests at once, and applies the delivery policy to
 * every answer: accepted batches are reported to the owner; 429/5xx/timeouts
 * back off with full jitter (and Retry-After); 400/422/413 bisect the batch
 * until the bad events are alone, so that every good event is delivered and
 * only the bad ones are reported as refused; 401/403 pause everything; a
 * circuit breaker stops requests to an API that keeps failing.  The owner
 * records outcomes in its tables through the callbacks; the sender knows
 * nothing of SPI.
 */
#include "postgres.h"

#include "mb/pg_wchar.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "sender.h"
#include "settings.h"
#include "xact.h"

#define BODY_PREFIX "{\"events\":["
#define BODY_SUFFIX "]}"

/* A chunk able to hold "capacity" events, in its own memory context. */
MonkChunk *
MonkChunkCreate(MemoryContext parent, int capacity)
{
	MemoryContext cxt = AllocSetContextCreate(parent, "monk chunk", ALLOCSET_DEFAULT_SIZES);
	MonkChunk  *chunk = MemoryContextAllocZero(cxt, sizeof(MonkChunk));

	chunk->cxt = cxt;
	chunk->cap = capacity;
	chunk->ids = MemoryContextAlloc(cxt, sizeof(int64) * capacity);
	chunk->off = MemoryContextAlloc(cxt, sizeof(int) * capacity);
	chunk->len = MemoryContextAlloc(cxt, sizeof(int) * capacity);
	chunk->data.data = MemoryContextAlloc(cxt, 8192);
	chunk->data.maxlen = 8192;
	resetStringInfo(&chunk->data);
	appendStringInfoString(&chunk->data, BODY_PREFIX);
	chunk->min_id = PG_INT64_MAX;
	chunk->max_id = PG_INT64_MIN;
	return chunk;
}

/*
 * Add one rendered event, in UTF-8 (the API's encoding: the caller converts
 * from the database's, in a transaction).
 */
void
MonkChunkAdd(MonkChunk *chunk, int64 id, const char *event, int len, TimestampTz queued_at)
{
	MemoryContext old = MemoryContextSwitchTo(chunk->cxt);
	int			i = chunk->n;

	Assert(i < chunk->cap && !chunk->finished);
	if (i > 0)
		appendStringInfoChar(&chunk->data, ',');
	chunk->ids[i] = id;
	chunk->off[i] = chunk->data.len;
	chunk->len[i] = len;
	appendBinaryStringInfo(&chunk->data, event, len);
	chunk->n++;
	chunk->min_id = Min(chunk->min_id, id);
	chunk->max_id = Max(chunk->max_id, id);
	if (chunk->n == 1 || queued_at < chunk->oldest)
		chunk->oldest = queued_at;
	MemoryContextSwitchTo(old);
}

/* Attach the owner's record to the event just added. */
void
MonkChunkSetItem(MonkChunk *chunk, void *item)
{
	if (chunk->items == NULL)
		chunk->items = MemoryContextAllocZero(chunk->cxt, sizeof(void *) * chunk->cap);
	chunk->items[chunk->n - 1] = item;
}

/* Close the body: no event can be added afterwards. */
static void
MonkChunkFinish(MonkChunk *chunk)
{
	MemoryContext old = MemoryContextSwitchTo(chunk->cxt);

	appendStringInfoString(&chunk->data, BODY_SUFFIX);
	chunk->finished = true;
	MemoryContextSwitchTo(old);
}

void
MonkChunkFree(MonkChunk *chunk)
{
	MemoryContextDelete(chunk->cxt);
}

/* The batch endpoint under monk.base_url. */
static char *
MonkBatchUrl(void)
{
	char	   *base = MonkBaseUrl();
	char	   *url = psprintf("%s/v1/events/batch", base);

	pfree(base);
	return url;
}

MonkSender *
MonkSenderCreate(const MonkSenderOps *ops, void *arg, MemoryContext parent)
{
	MonkSender *sender = MemoryContextAllocZero(parent, sizeof(MonkSender));

	sender->http = MonkHttpCreate(parent);
	sender->ops = ops;
	sender->arg = arg;
	dlist_init(&sender->waiting);
	sender->circuit.state = MONK_CIRCUIT_CLOSED;
	return sender;
}

void
MonkSenderDestroy(MonkSender *sender)
{
	MonkHttpDestroy(sender->http);
	pfree(sender);
}

/* Tell the owner the circuit's state (the worker shows it in monk.status). */
static void
ReportCircuit(MonkSender *sender)
{
	if (sender->ops->circuit)
		sender->ops->circuit(sender->arg, sender->circuit.state);
}

static void
Count(MonkSender *sender, MonkCounter counter, int64 n)
{
	if (sender->ops->count)
		sender->ops->count(sender->arg, counter, n);
}

/* A new batch of chunk[start, start+count), due now. */
static MonkBatch *
NewBatch(MonkChunk *chunk, int start, int count)
{
	MonkBatch  *batch = MemoryContextAllocZero(chunk->cxt, sizeof(MonkBatch));

	batch->chunk = chunk;
	batch->start = start;
	batch->count = count;
	chunk->refs++;
	return batch;
}

/* Hand a finished chunk over: it is sent as one batch. */
void
MonkSenderSubmit(MonkSender *sender, MonkChunk *chunk)
{
	MonkBatch  *batch;

	if (!chunk->finished)
		MonkChunkFinish(chunk);
	batch = NewBatch(chunk, 0, chunk->n);
	dlist_push_tail(&sender->waiting, &batch->node);
	sender->nwaiting++;
}

/* The request body of a batch: the chunk's own when it is the whole chunk. */
static void
BuildBody(MonkBatch *batch)
{
	MonkChunk  *chunk = batch->chunk;
	MemoryContext old;

	if (batch->start == 0 && batch->count == chunk->n)
	{
		batch->req.body = chunk->data.data;
		batch->req.body_len = chunk->data.len;
		return;
	}
	old = MemoryContextSwitchTo(chunk->cxt);
	if (batch->body.data == NULL)
	{
		int			first = batch->start;
		int			last = batch->start + batch->count - 1;
		int			span = chunk->off[last] + chunk->len[last] - chunk->off[first];

		initStringInfo(&batch->body);
		enlargeStringInfo(&batch->body, span + 16);
		appendStringInfoString(&batch->body, BODY_PREFIX);
		/* events of a slice are contiguous, commas included */
		appendBinaryStringInfo(&batch->body, chunk->data.data + chunk->off[first], span);
		appendStringInfoString(&batch->body, BODY_SUFFIX);
	}
	MemoryContextSwitchTo(old);
	batch->req.body = batch->body.data;
	batch->req.body_len = batch->body.len;
}

/* The batch is done with (accepted or refused): release it. */
static void
Settle(MonkSender *sender, MonkBatch *batch)
{
	MonkChunk  *chunk = batch->chunk;

	if (batch->body.data)
		pfree(batch->body.data);
	pfree(batch);
	if (--chunk->refs == 0)
		sender->ops->chunk_done(sender->arg, chunk);
}

static void RecordOutcome(MonkSender *sender, bool success, TimestampTz now);
static void CountAnswer(MonkSender *sender, long status);
static void SetLastError(MonkSender *sender, MonkHttpRequest *req);

/* Start as many due batches as the limits allow. */
void
MonkSenderDispatch(MonkSender *sender)
{
	TimestampTz now = GetCurrentTimestamp();
	char	   *url = NULL;
	dlist_mutable_iter iter;

	if (sender->paused || sender->draining || now < sender->rate_limited_until)
		return;

	dlist_foreach_modify(iter, &sender->waiting)
	{
		MonkBatch  *batch = dlist_container(MonkBatch, node, iter.cur);
		long		wait_ms;
		bool		refused;

		if (sender->inflight >= monk_max_parallel_requests)
			break;
		if (batch->not_before > now)
			continue;
		if (!MonkCircuitAllows(&sender->circuit, now, &wait_ms))
			break;
		if (url == NULL)
			url = MonkBatchUrl();

		dlist_delete(&batch->node);
		sender->nwaiting--;
		BuildBody(batch);
		batch->req.owner = batch;
		batch->generation = sender->generation;
		MonkCircuitStarted(&sender->circuit);
		sender->inflight++;
		/* for monk's tests: a request that libcurl refuses to start */
		refused = MonkTestStepListed("fail_start");
		if (refused)
			strlcpy(batch->req.error, "could not start the request (monk.test_wait_points lists fail_start)",
					MONK_ERROR_MAX);
		if (refused ||
			!MonkHttpStart(sender->http, &batch->req, url, MonkApiKey(), monk_request_timeout))
		{
			/*
			 * could not even start: retried like a connection error, and
			 * counted as one by the circuit (a probe that never left ends)
			 */
			batch->req.status = 0;
			CountAnswer(sender, 0);
			SetLastError(sender, &batch->req);
			sender->inflight--;
			RecordOutcome(sender, false, now);
			dlist_push_tail(&sender->waiting, &batch->node);
			sender->nwaiting++;
			batch->not_before = TimestampTzPlusMilliseconds(now, MonkBackoffMs(++batch->attempts, -1));
		}
	}
	if (url)
		pfree(url);
	ReportCircuit(sender);
}

/* Milliseconds until the sender has something to start (-1: nothing). */
long
MonkSenderNextWakeMs(MonkSender *sender)
{
	TimestampTz now = GetCurrentTimestamp();
	TimestampTz next = 0;
	dlist_iter	iter;
	long		wait_ms;

	if (sender->paused || sender->draining || sender->nwaiting == 0 ||
		sender->inflight >= monk_max_parallel_requests)
		return -1;
	dlist_foreach(iter, &sender->waiting)
	{
		MonkBatch  *batch = dlist_container(MonkBatch, node, iter.cur);

		if (next == 0 || batch->not_before < next)
			next = batch->not_before;
	}
	if (sender->rate_limited_until > next)
		next = sender->rate_limited_until;
	if (sender->circuit.state == MONK_CIRCUIT_OPEN && sender->circuit.open_until > next)
		next = sender->circuit.open_until;
	else if (!MonkCircuitAllows(&sender->circuit, now, &wait_ms) && wait_ms < 0)
		return -1;				/* waiting for the probe */
	if (next <= now)
		return 0;
	return (long) ((next - now + 999) / 1000);
}

/* Put a batch back to wait for a retry. */
static void
Requeue(MonkSender *sender, MonkBatch *batch, TimestampTz not_before, bool front)
{
	batch->not_before = not_before;
	if (front)
		dlist_push_head(&sender->waiting, &batch->node);
	else
		dlist_push_tail(&sender->waiting, &batch->node);
	sender->nwaiting++;
}

/* Describe a failed request for logs and monk.status (never the key). */
static void
SetLastError(MonkSender *sender, MonkHttpRequest *req)
{
	if (req->status == 0)
		snprintf(sender->last_error, sizeof(sender->last_error), "no answer: %s", req->error);
	else
	{
		char		clip[161];
		bool		unexpected = MonkClassify(req->status, MONK_BATCH_ACCEPTED) == MONK_OUTCOME_UNEXPECTED;

		/* the answer is valid UTF-8 (http.c): clipped on a character */
		(void) MonkValidUtf8(req->response, req->response_len, clip, unexpected ? 121 : sizeof(clip));
		if (unexpected)
			snprintf(sender->last_error, sizeof(sender->last_error),
					 "unexpected answer HTTP %ld (the Events API accepts a batch with 202; is monk.base_url right?): %s",
					 req->status, clip);
		else
			snprintf(sender->last_error, sizeof(sender->last_error), "HTTP %ld: %s", req->status, clip);
	}
	if (sender->ops->outcome)
		sender->ops->outcome(sender->arg, sender->last_error);
}

/*
 * Record a request's outcome in the circuit breaker, and say in the server
 * log when the circuit opens or closes.
 */
static void
RecordOutcome(MonkSender *sender, bool success, TimestampTz now)
{
	int			before = sender->circuit.state;

	MonkCircuitRecord(&sender->circuit, success, now);
	if (sender->circuit.state == MONK_CIRCUIT_OPEN && before != MONK_CIRCUIT_OPEN)
		ereport(LOG,
				(errmsg("monk: the circuit breaker opened after %d consecutive failed requests; no request is sent for %d ms",
						sender->circuit.consecutive_failures, monk_circuit_open_time),
				 errdetail("Last error: %s", sender->last_error)));
	else if (sender->circuit.state == MONK_CIRCUIT_CLOSED && before != MONK_CIRCUIT_CLOSED)
		ereport(LOG,
				(errmsg("monk: the circuit breaker closed: the Events API answered again")));
}

/* Count a completed request by the class of its answer. */
static void
CountAnswer(MonkSender *sender, long status)
{
	if (status >= 200 && status < 300)
		Count(sender, MONK_REQUESTS_2XX, 1);
	else if (status >= 400 && status < 500)
		Count(sender, MONK_REQUESTS_4XX, 1);
	else if (status >= 500)
		Count(sender, MONK_REQUESTS_5XX, 1);
	else if (status == 0)
		Count(sender, MONK_REQUESTS_FAILED, 1);
	else
		Count(sender, MONK_REQUESTS_OTHER, 1);
}

/* 400, 422, 413: a single event is refused for good; more are bisected. */
static void
SplitRefused(MonkSender *sender, MonkBatch *batch, TimestampTz now)
{
	MonkHttpRequest *req = &batch->req;

	if (batch->count == 1)
	{
		Count(sender, MONK_EVENTS_FAILED, 1);
		sender->ops->refused(sender->arg, batch, req->status, req->response);
		Settle(sender, batch);
	}
	else
	{
		int			left = batch->count / 2;
		MonkBatch  *a = NewBatch(batch->chunk, batch->start, left);
		MonkBatch  *b = NewBatch(batch->chunk, batch->start + left, batch->count - left);

		a->attempts = b->attempts = batch->attempts;
		Requeue(sender, b, now, true);
		Requeue(sender, a, now, true);
		Settle(sender, batch);
	}
}

/* 401, 403, a refused certificate: pause (once per configuration) and keep the batch. */
static void
PauseOnAuth(MonkSender *sender, MonkBatch *batch, TimestampTz now)
{
	MonkHttpRequest *req = &batch->req;

	/* an answer for a key replaced since says nothing of the new version */
	if (!sender->paused && batch->generation == sender->generation)
	{
		sender->paused = true;
		sender->paused_on_tls = (req->status == 0);
		sender->ops->auth_failed(sender->arg, batch, req->status, req->status == 0 ? req->error : req->response);
	}
	if (batch->body.data)
	{
		pfree(batch->body.data);
		batch->body.data = NULL;
	}
	Requeue(sender, batch, now, true);
}

/*
 * 408, 429, 5xx, no answer: back off (honouring Retry-After for every
 * request), or, after monk.max_retries, park the batch or give it up.
 */
static void
RetryLater(MonkSender *sender, MonkBatch *batch, TimestampTz now)
{
	MonkHttpRequest *req = &batch->req;

	Count(sender, MONK_EVENTS_RETRIED, batch->count);
	if (req->retry_after_ms >= 0)
		sender->rate_limited_until =
			Max(sender->rate_limited_until,
				TimestampTzPlusMilliseconds(now, Min(req->retry_after_ms, MONK_MAX_RETRY_AFTER_MS)));
	batch->attempts++;
	if (batch->attempts <= monk_max_retries)
		Requeue(sender, batch,
				TimestampTzPlusMilliseconds(now, MonkBackoffMs(batch->attempts, req->retry_after_ms)),
				false);
	else if (sender->ops->parked(sender->arg, batch, req->status, sender->last_error))
	{
		/* parked: kept and tried again after the longest backoff */
		batch->attempts = 0;
		Requeue(sender, batch, TimestampTzPlusMilliseconds(now, monk_retry_max_delay), false);
	}
	else
		Settle(sender, batch);
}

/* Apply the delivery policy to one completed request. */
static void
Complete(MonkSender *sender, MonkBatch *batch)
{
	MonkHttpRequest *req = &batch->req;
	TimestampTz now = GetCurrentTimestamp();

	sender->inflight--;
	CountAnswer(sender, req->status);
	if (req->status == 0 && req->tls_failed)
	{
		/*
		 * the certificate was refused: like a refused key, retrying cannot
		 * help
		 */
		SetLastError(sender, req);
		PauseOnAuth(sender, batch, now);
		ReportCircuit(sender);
		return;
	}
	switch (MonkClassify(req->status, MONK_BATCH_ACCEPTED))
	{
		case MONK_OUTCOME_ACCEPTED:
			RecordOutcome(sender, true, now);
			Count(sender, MONK_EVENTS_SENT, batch->count);
			if (sender->ops->outcome)
				sender->ops->outcome(sender->arg, NULL);
			sender->ops->accepted(sender->arg, batch);
			Settle(sender, batch);
			break;
		case MONK_OUTCOME_SPLIT:
			/* the API answered: it is healthy, the data is not */
			SetLastError(sender, req);
			RecordOutcome(sender, true, now);
			SplitRefused(sender, batch, now);
			break;
		case MONK_OUTCOME_AUTH:
			/* the API answered (a half-open probe too): the key is wrong */
			SetLastError(sender, req);
			RecordOutcome(sender, true, now);
			PauseOnAuth(sender, batch, now);
			break;
		case MONK_OUTCOME_RETRY:
			SetLastError(sender, req);
			RecordOutcome(sender, false, now);
			RetryLater(sender, batch, now);
			break;
		case MONK_OUTCOME_UNEXPECTED:
			/* not the API's acceptance: nothing is settled */
			SetLastError(sender, req);
			RecordOutcome(sender, false, now);
			if (sender->ops->unexpected)
				sender->ops->unexpected(sender->arg, batch, req->status);
			RetryLater(sender, batch, now);
			break;
	}
	ReportCircuit(sender);
}

/*
 * Wait for the network, the latch or timeout_ms (-1: no limit), then handle
 * every completed request.  Returns true when the latch was set.
 */
bool
MonkSenderWait(MonkSender *sender, long timeout_ms, uint32 wait_event_info)
{
	bool		latch_set = MonkHttpWait(sender->http, timeout_ms, wait_event_info);
	MonkHttpRequest *req;

	while ((req = MonkHttpNextDone(sender->http)) != NULL)
		Complete(sender, (MonkBatch *) req->owner);
	return latch_set;
}

/*
 * The configuration was reloaded: send again (an authentication pause ends);
 * with another destination (URL, key or CA), start afresh.
 */
void
MonkSenderConfigChanged(MonkSender *sender, bool destination)
{
	dlist_iter	iter;

	sender->generation++;
	sender->paused = false;
	if (!destination)
		return;

	/*
	 * Another URL, key or CA: what the old one answered says nothing of it.
	 * The circuit closes, Retry-After and every backoff end: the waiting
	 * batches go at the next dispatch.
	 */
	memset(&sender->circuit, 0, sizeof(sender->circuit));
	sender->circuit.state = MONK_CIRCUIT_CLOSED;
	sender->rate_limited_until = 0;
	dlist_foreach(iter, &sender->waiting)
		dlist_container(MonkBatch, node, iter.cur)->not_before = 0;
	ReportCircuit(sender);
}

/* Was the pause a refused TLS certificate (not a refused key)? */
bool
MonkSenderPausedOnTls(const MonkSender *sender)
{
	return sender->paused && sender->paused_on_tls;
}

/* Has the API refused the key (sending paused until the settings change)? */
bool
MonkSenderPaused(const MonkSender *sender)
{
	return sender->paused;
}

/* Requests on the network now. */
int
MonkSenderInflight(const MonkSender *sender)
{
	return sender->inflight;
}

/* Batches waiting for their retry (backing off). */
int
MonkSenderBackingOff(const MonkSender *sender)
{
	return sender->nwaiting;
}

/* The circuit breaker's state. */
MonkCircuitState
MonkSenderCircuit(const MonkSender *sender)
{
	return sender->circuit.state;
}

/* Shutting down: start no new request; those in flight finish. */
void
MonkSenderStartDraining(MonkSender *sender)
{
	sender->draining = true;
}
