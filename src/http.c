/*
 * http.c
 *		The HTTP client of monk: a libcurl multi handle that POSTs JSON bodies,
 *		several at once, over kept-alive connections.
 *
 * curl's sockets are waited on together with the process latch and
 * postmaster death in one WaitEventSet, so that SIGTERM, query cancel and
 * statement_timeout are seen at once even while requests are in flight.
 * The set is kept from wait to wait and made again only when curl's
 * sockets change.  A client lives in a memory context of its own: deleting
 * it (or the context it was made under, as an aborted transaction does)
 * releases the curl handles and the set through a reset callback.
 * Nothing here raises an ERROR from inside a curl callback: the callbacks
 * only record, and failures are reported in the request once curl returns.
 * TLS peers are always verified (the system's CA bundle, or monk.ca_file).
 * This file knows nothing of tables or SPI.
 */
#include "postgres.h"

#include <curl/curl.h>

#include "lib/stringinfo.h"
#include "catalog/namespace.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "utils/memutils.h"

#include "compat.h"
#include "http.h"
#include "settings.h"

#define MAX_SOCKETS 256

/*
 * A transfer's curl resources, kept by the client (not by the request,
 * which may be gone when an aborted transaction deletes the client).
 */
typedef struct MonkHttpHandle
{
	CURL	   *easy;
	struct curl_slist *headers;
	dlist_node	node;			/* in the client's handles */
} MonkHttpHandle;

typedef struct MonkSocket
{
	curl_socket_t fd;
	int			what;			/* CURL_POLL_IN / OUT / INOUT */
} MonkSocket;

struct MonkHttpClient
{
	MemoryContext cxt;			/* the client's own: everything below */
	MemoryContextCallback release;	/* curl handles and the wait set */
	CURLM	   *multi;
	WaitEventSet *set;			/* curl's sockets, the latch, postmaster death */
	bool		set_stale;		/* curl's sockets changed since it was made */
	int			running;
	long		timer_ms;		/* curl's timer, -1 when none */
	int			nsockets;
	MonkSocket	sockets[MAX_SOCKETS];
	dlist_head	handles;		/* MonkHttpHandle: transfers not cleaned up */
	dlist_head	inflight;		/* requests started, not completed */
	dlist_head	done;			/* completed requests not yet taken */
};

static bool curl_initialised = false;

static const char *
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

	client->set_stale = true;
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
 * for a request that wants it, the whole body up to its limit (in the
 * client's context, allocated without raising: no ERROR inside a curl
 * callback).
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
			size_t		cap = Max(Max(req->big_cap * 2, req->big_len + n + 1), 65536);
			char	   *grown = MemoryContextAllocExtended(req->cxt, cap, MCXT_ALLOC_NO_OOM);

			if (grown == NULL)
				return 0;
			if (req->big_response)
			{
				memcpy(grown, req->big_response, req->big_len);
				pfree(req->big_response);
			}
			req->big_response = grown;
			req->big_cap = cap;
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

/* Release a transfer's curl resources. */
static void
HandleCleanup(MonkHttpClient *client, MonkHttpHandle *handle)
{
	curl_multi_remove_handle(client->multi, handle->easy);
	curl_easy_cleanup(handle->easy);
	curl_slist_free_all(handle->headers);
	dlist_delete(&handle->node);
	pfree(handle);
}

/*
 * The reset callback of a client's context: curl's handles and the wait
 * set.  It touches no request: their memory may already be gone.
 */
static void
ReleaseClient(void *arg)
{
	MonkHttpClient *client = arg;
	dlist_mutable_iter iter;

	dlist_foreach_modify(iter, &client->handles)
		HandleCleanup(client, dlist_container(MonkHttpHandle, node, iter.cur));
	curl_multi_cleanup(client->multi);
	if (client->set)
		FreeWaitEventSet(client->set);
}

/*
 * Create a client in a memory context of its own under parent; libcurl is
 * initialised once per process.
 */
MonkHttpClient *
MonkHttpCreate(MemoryContext parent)
{
	MemoryContext cxt;
	MonkHttpClient *client;

	if (!curl_initialised)
	{
		if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
			ereport(ERROR,
					(errcode(ERRCODE_SYSTEM_ERROR),
					 errmsg("could not initialise libcurl")));
		curl_initialised = true;
	}
	cxt = AllocSetContextCreate(parent, "monk http client", ALLOCSET_SMALL_SIZES);
	client = MemoryContextAllocZero(cxt, sizeof(MonkHttpClient));
	client->cxt = cxt;
	client->multi = curl_multi_init();
	if (client->multi == NULL)
	{
		MemoryContextDelete(cxt);
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("could not create a libcurl multi handle")));
	}
	client->timer_ms = -1;
	dlist_init(&client->handles);
	dlist_init(&client->inflight);
	dlist_init(&client->done);
	client->release.func = ReleaseClient;
	client->release.arg = client;
	MemoryContextRegisterResetCallback(cxt, &client->release);
	if (curl_multi_setopt(client->multi, CURLMOPT_SOCKETFUNCTION, SocketCallback) != CURLM_OK ||
		curl_multi_setopt(client->multi, CURLMOPT_SOCKETDATA, client) != CURLM_OK ||
		curl_multi_setopt(client->multi, CURLMOPT_TIMERFUNCTION, TimerCallback) != CURLM_OK ||
		curl_multi_setopt(client->multi, CURLMOPT_TIMERDATA, client) != CURLM_OK ||
		curl_multi_setopt(client->multi, CURLMOPT_MAXCONNECTS, 128L) != CURLM_OK)
	{
		MemoryContextDelete(cxt);
		ereport(ERROR,
				(errcode(ERRCODE_SYSTEM_ERROR),
				 errmsg("could not configure a libcurl multi handle")));
	}
	return client;
}

/* Release a request's curl resources. */
static void
RequestCleanup(MonkHttpClient *client, MonkHttpRequest *req)
{
	if (req->handle)
		HandleCleanup(client, (MonkHttpHandle *) req->handle);
	req->easy = NULL;
	req->handle = NULL;
}

/* Free a client: its context, whose callback releases curl's handles. */
void
MonkHttpDestroy(MonkHttpClient *client)
{
	MemoryContextDelete(client->cxt);
}

/*
 * Set one option of a request's handle; on a failure, name the option in
 * req->error and return false: a request is never sent with an option
 * missing (TLS verification and the protocol list among them).
 */
#define SET_OPTION(req, option, value) \
	SetOption((req), curl_easy_setopt((req)->easy, (option), (value)), #option)

static bool
SetOption(MonkHttpRequest *req, CURLcode rc, const char *name)
{
	if (rc == CURLE_OK)
		return true;
	snprintf(req->error, MONK_ERROR_MAX, "could not set %s: %s", name, curl_easy_strerror(rc));
	ereport(WARNING,
			(errcode(ERRCODE_SYSTEM_ERROR),
			 errmsg("monk: libcurl refused option %s: %s; the request is not sent",
					name, curl_easy_strerror(rc))));
	return false;
}

/* The options of a request's handle (req->easy set). */
static bool
SetOptions(MonkHttpRequest *req, struct curl_slist *headers, const char *url, int timeout_ms)
{
	bool		get = req->method && strcmp(req->method, "GET") == 0;

	if (!(SET_OPTION(req, CURLOPT_URL, url) &&
		  SET_OPTION(req, CURLOPT_PROTOCOLS_STR, "http,https") &&
		  SET_OPTION(req, CURLOPT_SSL_VERIFYPEER, 1L) &&
		  SET_OPTION(req, CURLOPT_SSL_VERIFYHOST, 2L) &&
		  (!monk_ca_file || !monk_ca_file[0] || SET_OPTION(req, CURLOPT_CAINFO, monk_ca_file)) &&
		  SET_OPTION(req, CURLOPT_FOLLOWLOCATION, 0L) &&
		  SET_OPTION(req, CURLOPT_HTTPHEADER, headers) &&
		  SET_OPTION(req, CURLOPT_USERAGENT, MonkHttpUserAgent())))
		return false;
	if (get ? !SET_OPTION(req, CURLOPT_HTTPGET, 1L)
		: !(SET_OPTION(req, CURLOPT_POST, 1L) &&
			SET_OPTION(req, CURLOPT_POSTFIELDS, req->body) &&
			SET_OPTION(req, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body_len)))
		return false;
	return SET_OPTION(req, CURLOPT_TIMEOUT_MS, (long) timeout_ms) &&
		SET_OPTION(req, CURLOPT_CONNECTTIMEOUT_MS, (long) Min(timeout_ms, 10000)) &&
		SET_OPTION(req, CURLOPT_NOSIGNAL, 1L) &&
		SET_OPTION(req, CURLOPT_TCP_KEEPALIVE, 1L) &&
		SET_OPTION(req, CURLOPT_WRITEFUNCTION, WriteCallback) &&
		SET_OPTION(req, CURLOPT_WRITEDATA, req) &&
		SET_OPTION(req, CURLOPT_PRIVATE, req);
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
	MonkHttpHandle *handle;

	req->done = false;
	req->status = 0;
	req->retry_after_ms = -1;
	req->error[0] = '\0';
	req->tls_failed = false;
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

	handle = MemoryContextAlloc(client->cxt, sizeof(MonkHttpHandle));
	handle->easy = easy;
	handle->headers = headers;
	dlist_push_tail(&client->handles, &handle->node);
	req->easy = easy;
	req->handle = handle;
	req->cxt = client->cxt;
	if (!SetOptions(req, headers, url, timeout_ms))
	{
		RequestCleanup(client, req);
		req->done = true;
		return false;
	}

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
static long
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
			CURLcode	rc = msg->data.result;

			req->status = 0;
			strlcpy(req->error, curl_easy_strerror(rc), MONK_ERROR_MAX);
			req->tls_failed = (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE ||
							   rc == CURLE_SSL_CERTPROBLEM || rc == CURLE_SSL_ISSUER_ERROR ||
							   rc == CURLE_SSL_PINNEDPUBKEYNOTMATCH);
		}
		/* the first MONK_RESPONSE_MAX bytes, as valid UTF-8 text */
		{
			char		clean[MONK_RESPONSE_MAX + 1];

			req->response_len = MonkValidUtf8(req->response, req->response_len, clean, sizeof(clean));
			memcpy(req->response, clean, req->response_len + 1);
		}
		RequestCleanup(client, req);
		req->done = true;
		client->running--;
		dlist_delete(&req->node);
		dlist_push_tail(&client->done, &req->node);
	}
}

/*
 * (Re)make the client's wait set: the latch, postmaster death and curl's
 * sockets as curl last asked for them.
 */
static void
MakeWaitSet(MonkHttpClient *client)
{
	MemoryContext old = MemoryContextSwitchTo(client->cxt);

	if (client->set)
		FreeWaitEventSet(client->set);
	client->set = NULL;
	client->set = MonkCreateWaitEventSet(client->nsockets + 2);
	AddWaitEventToSet(client->set, WL_LATCH_SET, PGINVALID_SOCKET, MyLatch, NULL);
	AddWaitEventToSet(client->set, WL_EXIT_ON_PM_DEATH, PGINVALID_SOCKET, NULL, NULL);
	for (int i = 0; i < client->nsockets; i++)
	{
		uint32		ev = 0;

		if (client->sockets[i].what & CURL_POLL_IN)
			ev |= WL_SOCKET_READABLE;
		if (client->sockets[i].what & CURL_POLL_OUT)
			ev |= WL_SOCKET_WRITEABLE;
		if (ev)
			AddWaitEventToSet(client->set, ev, client->sockets[i].fd, NULL, NULL);
	}
	client->set_stale = false;
	MemoryContextSwitchTo(old);
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
	WaitEvent	events[MAX_SOCKETS + 2];
	long		curl_timeout = MonkHttpTimeout(client);
	int			nevents;
	bool		latch_set = false;
	bool		socket_ready = false;

	if (curl_timeout >= 0 && (timeout_ms < 0 || curl_timeout < timeout_ms))
		timeout_ms = curl_timeout;
	if (client->set == NULL || client->set_stale)
		MakeWaitSet(client);
	nevents = WaitEventSetWait(client->set, timeout_ms, events, lengthof(events), wait_event_info);

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
		pfree(req->big_response);
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

/*
 * Copy the bytes of an answer as valid UTF-8 text into out (outcap bytes,
 * terminator included): a byte that does not begin a valid character (and a
 * NUL) is written as \xNN, visibly; the text is cut on a character boundary
 * when out is full.  Returns its length.  Answers are stored (dead letters,
 * monk.status) and shown in errors: never as bytes that no client can read
 * or that pg_dump's output cannot restore.
 */
size_t
MonkValidUtf8(const char *s, size_t len, char *out, size_t outcap)
{
	static const char hex[] = "0123456789abcdef";
	size_t		i = 0;
	size_t		o = 0;

	while (i < len)
	{
		const unsigned char *c = (const unsigned char *) s + i;
		int			n = pg_utf_mblen(c);

		if (*c >= 0xC2 && *c <= 0xF4 && i + n > len)
		{
			size_t		k = i + 1;

			while (k < len && (((const unsigned char *) s)[k] & 0xC0) == 0x80)
				k++;
			if (k == len)
				break;			/* a character cut by the end of the bytes */
		}
		if (*c != 0 && i + n <= len && pg_utf8_islegal(c, n))
		{
			if (o + n + 1 > outcap)
				break;
			memcpy(out + o, c, n);
			o += n;
			i += n;
		}
		else
		{
			if (o + 4 + 1 > outcap)
				break;
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[*c >> 4];
			out[o++] = hex[*c & 15];
			i++;
		}
	}
	out[o] = '\0';
	return o;
}

/*
 * Valid UTF-8 text (MonkValidUtf8) as text of the database's encoding,
 * without a conversion that could fail: in a database that is neither UTF8
 * nor SQL_ASCII, each character that is not ASCII is written \uXXXX (every
 * server encoding holds ASCII).  palloc'd.
 */
char *
MonkTextForDatabase(const char *utf8)
{
	StringInfoData buf;
	int			enc = GetDatabaseEncoding();

	if (enc == PG_UTF8 || enc == PG_SQL_ASCII)
		return pstrdup(utf8);
	initStringInfo(&buf);
	for (const unsigned char *c = (const unsigned char *) utf8; *c;)
	{
		int			n = pg_utf_mblen(c);

		if (*c < 0x80)
			appendStringInfoChar(&buf, (char) *c);
		else
		{
			pg_wchar	w = utf8_to_unicode(c);

			appendStringInfo(&buf, w > 0xFFFF ? "\\U%08X" : "\\u%04X", (unsigned int) w);
		}
		for (int k = 0; k < n && *c; k++)
			c++;
	}
	return buf.data;
}

/*
 * Text of the database's encoding converted to UTF-8 (palloc'd, terminated),
 * s itself when the database's encoding needs no conversion, or NULL when a
 * character has no equivalent in UTF-8: no error is raised.  In a
 * transaction (the conversion's function is looked up).
 */
char *
MonkToUtf8NoError(const char *s, int len)
{
	return MonkToUtf8NoErrorFrom(GetDatabaseEncoding(), s, len);
}

/* The same, from text of encoding enc (another database's). */
char *
MonkToUtf8NoErrorFrom(int enc, const char *s, int len)
{
	Oid			proc;
	unsigned char *out;
	int			done;

	if (enc == PG_UTF8 || enc == PG_SQL_ASCII)
		return unconstify(char *, s);
	proc = FindDefaultConversionProc(enc, PG_UTF8);
	if (!OidIsValid(proc))
		return NULL;
	out = palloc((Size) len * MAX_CONVERSION_GROWTH + 1);
	done = pg_do_encoding_conversion_buf(proc, enc, PG_UTF8, (unsigned char *) s, len,
										 out, len * MAX_CONVERSION_GROWTH + 1, true);
	if (done < len)
	{
		pfree(out);
		return NULL;
	}
	return (char *) out;
}
