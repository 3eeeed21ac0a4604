/*
 * http.h
 *		A small libcurl multi client: POST JSON bodies in parallel over reused
 *		connections, wait on curl's sockets and the process latch at once.
 */
#ifndef MONK_HTTP_H
#define MONK_HTTP_H

#include "lib/ilist.h"

#define MONK_RESPONSE_MAX 4096	/* bytes of an answer's body kept */
#define MONK_ERROR_MAX 256

typedef struct MonkHttpClient MonkHttpClient;

/* One request; the body must stay valid until the request completes. */
typedef struct MonkHttpRequest
{
	void	   *owner;			/* the caller's */
	void	   *easy;			/* CURL *, private */
	void	   *handle;			/* the client's record of it (private) */
	MemoryContext cxt;			/* the client's, for big_response; private */
	const char *method;			/* NULL: POST */
	const char *body;			/* NULL with GET */
	size_t		body_len;
	size_t		max_response;	/* 0: keep MONK_RESPONSE_MAX bytes; else keep
								 * up to this many in big_response */

	/* the outcome, once done */
	bool		done;
	long		status;			/* HTTP status, 0 when no answer */
	long		retry_after_ms; /* Retry-After, -1 when absent */
	char		error[MONK_ERROR_MAX];	/* transport error, "" when answered */
	bool		tls_failed;		/* no answer: the server's certificate was
								 * refused (retrying cannot help) */
	char		response[MONK_RESPONSE_MAX + 1];
	size_t		response_len;
	bool		response_truncated;
	char	   *big_response;	/* with max_response: the whole body (in the
								 * client's context) */
	size_t		big_len;
	size_t		big_cap;
	dlist_node	node;
} MonkHttpRequest;

extern MonkHttpClient *MonkHttpCreate(MemoryContext parent);
extern void MonkHttpDestroy(MonkHttpClient *client);
extern bool MonkHttpStart(MonkHttpClient *client, MonkHttpRequest *req,
						  const char *url, const char *api_key, int timeout_ms);
extern bool MonkHttpWait(MonkHttpClient *client, long timeout_ms, uint32 wait_event_info);
extern MonkHttpRequest *MonkHttpNextDone(MonkHttpClient *client);
extern void MonkHttpFreeResponse(MonkHttpRequest *req);
extern size_t MonkValidUtf8(const char *s, size_t len, char *out, size_t outcap);
extern char *MonkTextForDatabase(const char *utf8);
extern char *MonkToUtf8NoError(const char *s, int len);
extern char *MonkToUtf8NoErrorFrom(int enc, const char *s, int len);

#endif
