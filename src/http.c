/*
 * http.c
 *		The HTTP client of monk: a libcurl multi handle that POSTs JSON bodies,
 *		several at once, over kept-alive connections.
 *
 * curl's sockets are waited on together with the process latch and
 * postmaster death in one WaitEventSet, so that SIGTERM, query cancel and
 * statement_timeout are seen at once even while requests are in flight.
 * Nothing here raises an ERROR from inside a curl callback: the callbacks
 * only record, and failures are reported in the request once curl returns.
 * TLS peers are always verified (the system's CA bundle, or monk.ca_file).
 * This file knows nothing of tables or SPI.
 */
#include "postgres.h"

#include <curl/curl.h>

#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/memutils.h"

#include "compat.h"
#include "http.h"
#include "settings.h"

#define MAX_SOCKETS 256

typedef struct MonkSocket
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN / OUT / INOUT */
} MonkSocket;

struct MonkHttpClient
{
	CURLM	   *multi;
	int			running;
	long		timer_ms;		/* curl's timer, -1 when none */
	int			nsockets;
	MonkSocket	sockets[MAX_SOCKETS];
	dlist_head	inflight;		/* requests started, not completed */
	dlist_head	done;			/* completed requests not yet taken */
};

static bool curl_initialised = false;

const char *
MonkHttpUserAgent(void)
{
	return "monk-postgres/" MONK_VERSION;
}

/* curl tells which sockets to wait on, and for what. */
static int
SocketCallback(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
	MonkHttpClient *client = userp;
	int			i;

	for (i = 0; i < client->nsockets; i++)
		if (client->sockets[i].fd == fd)
			break;
	if (what == CURL_POLL_REMOVE)
	{
		if (i < client->nsockets)
			client->sockets[i] = client->sockets[--client->nsockets];
		return 0;
	}
	if (i == client->nsockets)
	{
		if (client->nsockets == MAX_SOCKETS)
			return -1;			/* curl fails the transfer */
		client->nsockets++;
	}
	client->sockets[i].fd = fd;
	client->sockets[i].what = what;
	return 0;
}

static int
TimerCallback(CURLM *multi, long timeout_ms, void *userp)
{
	MonkHttpClient *client = userp;

	client->timer_ms = timeout_ms;
	return 0;
}

/*
 * Keep the beginning of the answer's body (for dead letters and errors), or,
 * for a request that wants it, the whole body up to its limit (malloc: no
 * palloc, hence no ERROR, inside a curl callback).
 */
static size_t
WriteCallback(char *data, size_t size, size_t nmemb, void *userp)
{
	MonkHttpRequest *req = userp;
	size_t		n = size * nmemb;
	size_t		room = MONK_RESPONSE_MAX - req->response_len;

	if (req->max_response > 0)
	{
		if (req->big_len + n > req->max_response)
		{
			req->response_truncated = true;
			return 0;			/* curl fails the transfer: too large */
		}
		if (req->big_len + n + 1 > req->big_cap)
		{
			size_t		cap = Max(req->big_cap * 2, req->big_len + n + 1);
			char	   *grown = realloc(req->big_response, Max(cap, 65536));

			if (grown == NULL)
				return 0;
			req->big_response = grown;
			req->big_cap = Max(cap, 65536);
		}
		memcpy(req->big_response + req->big_len, data, n);
		req->big_len += n;
		req->big_response[req->big_len] = '\0';
	}

	if (n > room)
		req->response_truncated = true;
	if (room > 0)
	{
		size_t		take = Min(n, room);

		memcpy(req->response + req->response_len, data, take);
		req->response_len += take;
		req->response[req->response_len] = '\0';
	}
	return n;
}

/* Create a client; libcurl is initialised once per process. */
MonkHttpClient *
MonkHttpCreate(void)
{
	MonkHttpClient *client;

	if (!curl_initialised)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			ereport(ERROR,
					(errcode(ERRCODE_SYSTEM_ERROR),
					 errmsg("could not initialise libcurl")));
		curl_initialised = true;
	}
	client = MemoryContextAllocZero(TopMemoryContext, sizeof(MonkHttpClient));
	client->multi = curl_multi_init();
	if (client->multi == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl multi handle")));
	client->timer_ms = -1;
	dlist_init(&client->inflight);
	dlist_init(&client->done);
	curl_multi_setopt(client->multi, CURLMOPT_SOCKETFUNCTION, SocketCallback);
	curl_multi_setopt(client->multi, CURLMOPT_SOCKETDATA, client);
	curl_multi_setopt(client->multi, CURLMOPT_TIMERFUNCTION, TimerCallback);
	curl_multi_setopt(client->multi, CURLMOPT_TIMERDATA, client);
	curl_multi_setopt(client->multi, CURLMOPT_MAXCONNECTS, 128L);
	return client;
}

/* Release a request's curl resources. */
static void
RequestCleanup(MonkHttpClient *client, MonkHttpRequest *req)
{
	if (req->easy)
	{
		curl_multi_remove_handle(client->multi, req->easy);
		curl_easy_cleanup(req->easy);
		req->easy = NULL;
	}
	if (req->headers)
	{
		curl_slist_free_all(req->headers);
		req->headers = NULL;
	}
}

/* Abort every request in flight (they complete with no answer). */
void
MonkHttpAbortAll(MonkHttpClient *client)
{
	dlist_mutable_iter iter;

	dlist_foreach_modify(iter, &client->inflight)
	{
		MonkHttpRequest *req = dlist_container(MonkHttpRequest, node, iter.cur);

		dlist_delete(&req->node);
		RequestCleanup(client, req);
		req->done = true;
		req->status = 0;
		strlcpy(req->error, "request aborted", MONK_ERROR_MAX);
		dlist_push_tail(&client->done, &req->node);
	}
	client->running = 0;
}

void
MonkHttpDestroy(MonkHttpClient *client)
{
	MonkHttpAbortAll(client);
	curl_multi_cleanup(client->multi);
	pfree(client);
}

/*
 * Start POSTing req->body to url.  Returns false (with req->error set and
 * req->done) when the request could not even be set up.
 */
bool
MonkHttpStart(MonkHttpClient *client, MonkHttpRequest *req,
			  const char *url, const char *api_key, int timeout_ms)
{
	CURL	   *easy;
	struct curl_slist *headers = NULL;
	char		auth[1024];
	CURLMcode	mc;

	req->done = false;
	req->status = 0;
	req->retry_after_ms = -1;
	req->error[0] = '\0';
	req->response[0] = '\0';
	req->response_len = 0;
	req->response_truncated = false;
	MonkHttpFreeResponse(req);

	easy = curl_easy_init();
	if (easy == NULL)
	{
		strlcpy(req->error, "could not create a curl handle", MONK_ERROR_MAX);
		req->done = true;
		return false;
	}
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", api_key);
	headers = curl_slist_append(headers, auth);
	explicit_bzero(auth, sizeof(auth));
	if (!(req->method && strcmp(req->method, "GET") == 0))
		headers = curl_slist_append(headers, "Content-Type: application/json");
	headers = curl_slist_append(headers, "Accept: application/json");
	headers = curl_slist_append(headers, "Expect:");

	req->easy = easy;
	req->headers = headers;
	curl_easy_setopt(easy, CURLOPT_URL, url);
	curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(easy, CURLOPT_USERAGENT, MonkHttpUserAgent());
	if (req->method && strcmp(req->method, "GET") == 0)
		curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
	else
	{
		curl_easy_setopt(easy, CURLOPT_POST, 1L);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDS, req->body);
		curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body_len);
	}
	curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, (long) timeout_ms);
	curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, (long) Min(timeout_ms, 10000));
	curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
	if (monk_ca_file && monk_ca_file[0])
		curl_easy_setopt(easy, CURLOPT_CAINFO, monk_ca_file);
	curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, WriteCallback);
	curl_easy_setopt(easy, CURLOPT_WRITEDATA, req);
	curl_easy_setopt(easy, CURLOPT_PRIVATE, req);

	mc = curl_multi_add_handle(client->multi, easy);
	if (mc != CURLM_OK)
	{
		RequestCleanup(client, req);
		strlcpy(req->error, curl_multi_strerror(mc), MONK_ERROR_MAX);
		req->done = true;
		return false;
	}
	client->running++;
	dlist_push_tail(&client->inflight, &req->node);
	return true;
}

/* Milliseconds until curl needs to be called again, -1 when never. */
long
MonkHttpTimeout(MonkHttpClient *client)
{
	return client->running > 0 ? client->timer_ms : -1;
}

/* Move requests curl has finished to the done list. */
static void
CollectDone(MonkHttpClient *client)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(client->multi, &left)) != NULL)
	{
		MonkHttpRequest *req = NULL;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &req);
		if (req == NULL)
			continue;
		if (msg->data.result == CURLE_OK)
		{
			curl_off_t	retry_after = -1;

			curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &req->status);
			if (curl_easy_getinfo(msg->easy_handle, CURLINFO_RETRY_AFTER, &retry_after) == CURLE_OK &&
				retry_after >= 0)
				req->retry_after_ms = (long) Min(retry_after, (curl_off_t) 86400) * 1000;
			else
				req->retry_after_ms = -1;
		}
		else
		{
			req->status = 0;
			strlcpy(req->error, curl_easy_strerror(msg->data.result), MONK_ERROR_MAX);
		}
		RequestCleanup(client, req);
		req->done = true;
		client->running--;
		dlist_delete(&req->node);
		dlist_push_tail(&client->done, &req->node);
	}
}

/*
 * Wait up to timeout_ms (-1: no limit) for curl's sockets, curl's timer or
 * the process latch, then let curl do its work.  Returns true when the latch
 * was set (it is reset here; the caller checks its flags).  Postmaster death
 * ends the process.
 */
bool
MonkHttpWait(MonkHttpClient *client, long timeout_ms, uint32 wait_event_info)
{
	WaitEventSet *set;
	WaitEvent	events[MAX_SOCKETS + 2];
	long		curl_timeout = MonkHttpTimeout(client);
	int			nevents;
	bool		latch_set = false;
	bool		socket_ready = false;
	MemoryContext tmp;
	MemoryContext old;

	if (curl_timeout >= 0 && (timeout_ms < 0 || curl_timeout < timeout_ms))
		timeout_ms = curl_timeout;

	tmp = AllocSetContextCreate(CurrentMemoryContext, "monk wait", ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(tmp);
	set = MonkCreateWaitEventSet(client->nsockets + 2);
	AddWaitEventToSet(set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	for (int i = 0; i < client->nsockets; i++)
	{
		uint32		ev = 0;

		if (client->sockets[i].what & CURL_POLL_IN)
			ev |= WL_SOCKET_READABLE;
		if (client->sockets[i].what & CURL_POLL_OUT)
			ev |= WL_SOCKET_WRITEABLE;
		if (ev)
			AddWaitEventToSet(set, ev, client->sockets[i].fd, NULL, NULL);
	}
	nevents = WaitEventSetWait(set, timeout_ms, events, lengthof(events), wait_event_info);
	MemoryContextSwitchTo(old);

	for (int i = 0; i < nevents; i++)
	{
		WaitEvent  *e = &events[i];

		if (e->events & WL_LATCH_SET)
		{
			ResetLatch(MyLatch);
			latch_set = true;
		}
		else if (e->events & (WL_SOCKET_READABLE | WL_SOCKET_WRITEABLE))
		{
			int			flags = 0;
			int			running;

			if (e->events & WL_SOCKET_READABLE)
				flags |= CURL_CSELECT_IN;
			if (e->events & WL_SOCKET_WRITEABLE)
				flags |= CURL_CSELECT_OUT;
			curl_multi_socket_action(client->multi, e->fd, flags, &running);
			socket_ready = true;
		}
	}
	FreeWaitEventSet(set);
	MemoryContextDelete(tmp);

	/* curl's timer, new handles, or nothing happened: let curl run timers */
	if (client->running > 0 && (!socket_ready || client->timer_ms == 0))
	{
		int			running;

		curl_multi_socket_action(client->multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}
	CollectDone(client);
	return latch_set;
}

/* Free the whole body kept for a request with max_response. */
void
MonkHttpFreeResponse(MonkHttpRequest *req)
{
	if (req->big_response)
		free(req->big_response);
	req->big_response = NULL;
	req->big_len = 0;
	req->big_cap = 0;
}

/* Take the next completed request, or NULL. */
MonkHttpRequest *
MonkHttpNextDone(MonkHttpClient *client)
{
	if (dlist_is_empty(&client->done))
		return NULL;
	return dlist_container(MonkHttpRequest, node, dlist_pop_head_node(&client->done));
}
