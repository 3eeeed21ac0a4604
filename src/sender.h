/*
 * sender.h
 *		Batches of events on their way to the Events API: in flight, backing
 *		off, bisected; shared by the worker and the bulk export.
 */
#ifndef MONK_SENDER_H
#define MONK_SENDER_H

#include "datatype/timestamp.h"
#include "lib/ilist.h"
#include "lib/stringinfo.h"

#include "delivery.h"
#include "http.h"

/*
 * Events read together (one read of the outbox, one slice of a source),
 * owned by the caller until every batch made of them has settled.
 */
typedef struct MonkChunk
{
	MemoryContext cxt;
	int			n;
	int			cap;
	int64	   *ids;
	int		   *off;			/* where each event starts in data */
	int		   *len;
	StringInfoData data;		/* {"events":[e0,e1,...]} once finished */
	int64		min_id;
	int64		max_id;
	TimestampTz oldest;			/* queued_at of the oldest event */
	bool		finished;
	int			refs;			/* batches not yet settled */
	void	  **items;			/* the owner's record of each event, if any */
	int64		items_bytes;	/* their size, as the owner counts it */
	void	   *arg;			/* the caller's */
	dlist_node	node;			/* in the caller's list */
} MonkChunk;

/* A contiguous slice of a chunk sent as one request. */
typedef struct MonkBatch
{
	MonkChunk  *chunk;
	int			start;
	int			count;
	int			attempts;		/* failed attempts so far */
	uint32		generation;		/* of the configuration it was sent with */
	TimestampTz not_before;
	StringInfoData body;		/* built for slices, else the chunk's data */
	MonkHttpRequest req;
	dlist_node	node;
} MonkBatch;

typedef struct MonkSenderOps
{
	/* the API accepted the batch */
	void		(*accepted) (void *arg, MonkBatch *batch);
	/* the API refused this single event for good (400/422/413) */
	void		(*refused) (void *arg, MonkBatch *batch, long status, const char *body);

	/*
	 * the batch failed monk.max_retries times: return true to keep it and try
	 * again after monk.retry_max_delay, false to give it up (it settles)
	 */
	bool		(*parked) (void *arg, MonkBatch *batch, long status, const char *error);
	/* 401/403: sending is paused until MonkSenderResume */
	void		(*auth_failed) (void *arg, MonkBatch *batch, long status, const char *body);
	/* optional: an answer that is not the API's (retried; nothing settled) */
	void		(*unexpected) (void *arg, MonkBatch *batch, long status);
	/* every batch of the chunk has been accepted or refused */
	void		(*chunk_done) (void *arg, MonkChunk *chunk);

	/* optional reports, for monk.status (NULL: not reported) */
	/* a counter moved */
	void		(*count) (void *arg, MonkCounter counter, int64 n);
	/* a request failed (message never holds the key), or one succeeded (NULL) */
	void		(*outcome) (void *arg, const char *error);
	/* the circuit breaker's state, after each dispatch and answer */
	void		(*circuit) (void *arg, MonkCircuitState state);
} MonkSenderOps;

typedef struct MonkSender
{
	MonkHttpClient *http;
	const MonkSenderOps *ops;
	void	   *arg;
	dlist_head	waiting;		/* batches due now or backing off */
	int			nwaiting;
	int			inflight;
	MonkCircuit circuit;
	TimestampTz rate_limited_until; /* Retry-After applies to every request */
	bool		paused;			/* authentication failed */
	bool		paused_on_tls;	/* ... or the certificate was refused */
	uint32		generation;		/* of the settings; requests keep theirs */
	bool		draining;		/* shutting down: start nothing new */
	char		last_error[MONK_ERROR_MAX + 64];
} MonkSender;

extern MonkChunk *MonkChunkCreate(MemoryContext parent, int capacity);
extern void MonkChunkAdd(MonkChunk *chunk, int64 id, const char *event, int len,
						 TimestampTz queued_at);
extern void MonkChunkSetItem(MonkChunk *chunk, void *item);
extern void MonkChunkFree(MonkChunk *chunk);

extern MonkSender *MonkSenderCreate(const MonkSenderOps *ops, void *arg, MemoryContext parent);
extern void MonkSenderDestroy(MonkSender *sender);
extern void MonkSenderSubmit(MonkSender *sender, MonkChunk *chunk);
extern void MonkSenderDispatch(MonkSender *sender);
extern long MonkSenderNextWakeMs(MonkSender *sender);
extern bool MonkSenderWait(MonkSender *sender, long timeout_ms, uint32 wait_event_info);
extern void MonkSenderConfigChanged(MonkSender *sender, bool destination);

/* What the sender is doing (its owner reads these, never its fields). */
extern bool MonkSenderPaused(const MonkSender *sender);
extern bool MonkSenderPausedOnTls(const MonkSender *sender);
extern int	MonkSenderInflight(const MonkSender *sender);
extern int	MonkSenderBackingOff(const MonkSender *sender);
extern MonkCircuitState MonkSenderCircuit(const MonkSender *sender);
extern void MonkSenderStartDraining(MonkSender *sender);

#endif
