#!/usr/bin/env python3
"""monk_api.py -- a local stand-in for the Monk Events API.

The real Events API (events-api.monk.com) cannot be reached from our machines, so the monk extension's
tests, benchmarks and demo talk to this server instead.  It follows the Monk documentation pages in
shared/seeds/ (event schema, property rules, timestamp rules, idempotency "latest version wins, one copy
counted", whole batch refused when one event is invalid, at most 10,000 events per batch) and adds two
things the real API does not have:

* switchable faults for the /v1/* endpoints (injected statuses with Retry-After, dropped connections,
  answers lost after the events were stored, slow answers, a deterministic script of outcomes, key
  rotation, unknown customers), so that tests can prove the extension's retry and idempotency logic;
* an unauthenticated control API under /_test/ to switch those faults and to inspect what was received.

It is a single file using only the Python 3.11 standard library.  Events live in memory in one dict keyed
by idempotency key (guarded by one lock).  Per-event work is kept minimal so that a batch of 10,000 events
is parsed, validated and stored in a few tens of milliseconds.

Usage:
    python3 test/monk_api.py --port PORT [--host 127.0.0.1] [--api-key KEY] [--customers a,b]
                             [--port-file PATH] [--tls-cert PEM --tls-key PEM] [--verbose]

See the "Control API" comment above Handler for the /_test/ endpoints.
"""

import argparse
import base64
import binascii
import bisect
import collections
import datetime as dt
import gzip
import itertools
import json
import os
import random
import re
import signal
import socket
import ssl
import sys
import threading
import time
import traceback
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

# ----------------------------------------------------------------------------------------------------
# Limits and constants
# ----------------------------------------------------------------------------------------------------

MAX_BATCH_EVENTS = 10_000            # seeds: "up to 10,000 events per request"
MAX_BODY_BYTES = 256 * 1024 * 1024   # anything bigger is refused with 413 before reading it
MAX_FUTURE_US = 3600 * 1_000_000     # seeds: "must not be more than 1 hour in the future"
LIST_DEFAULT_LIMIT = 100
LIST_MAX_LIMIT = 1000
REQUEST_LOG_SIZE = 10_000            # how many /v1 requests /_test/requests remembers
HISTORY = 16                         # versions of each key remembered, in the order received
IDLE_TIMEOUT_S = 120                 # keep-alive connections idle longer than this are closed

EVENT_FIELDS = frozenset(("customerId", "externalCustomerId", "eventName",
                          "properties", "timestamp", "idempotencyKey"))

EPOCH = dt.datetime(1970, 1, 1)
UTC = dt.timezone.utc
EPOCH_UTC = EPOCH.replace(tzinfo=UTC)
ONE_US = dt.timedelta(microseconds=1)

STATUS_ERROR_NAMES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                      405: "method_not_allowed", 408: "request_timeout", 409: "conflict",
                      413: "payload_too_large", 422: "unprocessable_entity", 429: "rate_limited",
                      500: "internal_error", 502: "bad_gateway", 503: "service_unavailable",
                      504: "gateway_timeout"}

# ----------------------------------------------------------------------------------------------------
# Time parsing and formatting (integers of microseconds since the Unix epoch, UTC)
# ----------------------------------------------------------------------------------------------------

# An ISO 8601 date-time in extended format: date, "T", hh:mm[:ss[.fraction]], and a UTC designator
# ("Z") or offset (+hh:mm, +hhmm, +hh).  Event timestamps must carry the designator/offset: a time
# without one is local time of an unknown zone and cannot be attributed to a billing period.
_TS_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?"
                    r"(?:(Z)|([+-])(\d{2})(?::?(\d{2}))?)?\Z")
_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})\Z")


def parse_ts_us(s, require_offset=True):
    """Parse an ISO 8601 date-time string; return microseconds since the epoch (UTC) or None.

    The regular expression fixes the accepted shape; datetime.fromisoformat (C, fast) then checks the
    values (month 13, 25:00, offset +24:00, ... are refused).
    """
    m = _TS_RE.match(s)
    if m is None or (require_offset and m.group(8) is None and m.group(9) is None):
        return None
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - EPOCH_UTC) // ONE_US


def parse_query_time_us(s):
    """Parse a query bound: an ISO 8601 date-time (no offset = UTC) or a date (= midnight UTC)."""
    m = _DATE_RE.match(s)
    if m is not None:
        try:
            delta = dt.datetime(int(m[1]), int(m[2]), int(m[3])) - EPOCH
        except ValueError:
            return None
        return (delta.days * 86400 + delta.seconds) * 1_000_000
    return parse_ts_us(s, require_offset=False)


def format_us(us):
    """Microseconds since the epoch -> ISO 8601 UTC with a Z suffix (millisecond precision)."""
    t = EPOCH + dt.timedelta(microseconds=us)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t.microsecond // 1000)


def now_us():
    return time.time_ns() // 1000


# ----------------------------------------------------------------------------------------------------
# Event validation (the seeds' rules)
# ----------------------------------------------------------------------------------------------------

def validate_event(ev, index, now, customers, errors, tcache):
    """Check one event; append {"index","field","message"} dicts to errors for each broken rule.

    Returns the event's time in microseconds (None when it has no timestamp).  The common path (a valid
    event) does only a handful of dict look-ups and type checks; tcache memoises timestamp strings
    within one request, since a batch usually repeats the same few timestamps.
    """
    if type(ev) is not dict:
        errors.append({"index": index, "field": "", "message": "event must be a JSON object"})
        return None
    if not ev.keys() <= EVENT_FIELDS:
        for k in ev.keys() - EVENT_FIELDS:
            errors.append({"index": index, "field": k, "message": "unknown field %r" % k})

    name = ev.get("eventName")
    if type(name) is not str or not name:
        errors.append({"index": index, "field": "eventName",
                       "message": "eventName is required and must be a non-empty string"})

    has_cust = False
    for field in ("customerId", "externalCustomerId"):
        if field in ev:
            has_cust = True
            v = ev[field]
            if type(v) is not str or not v:
                errors.append({"index": index, "field": field,
                               "message": field + " must be a non-empty string"})
            elif customers is not None and v not in customers:
                errors.append({"index": index, "field": field,
                               "message": "unknown customer %r" % v})
    if not has_cust:
        errors.append({"index": index, "field": "customerId",
                       "message": "either customerId or externalCustomerId is required"})

    if "properties" in ev:
        props = ev["properties"]
        if type(props) is not dict:
            errors.append({"index": index, "field": "properties",
                           "message": "properties must be a JSON object"})
        else:
            for k, v in props.items():
                t = type(v)
                if t is not str and t is not int and t is not float and t is not bool:
                    what = ("null" if v is None else "an array" if t is list else "an object")
                    errors.append({"index": index, "field": "properties." + k,
                                   "message": "property values must be strings, numbers or booleans,"
                                              " not " + what})

    if "idempotencyKey" in ev:
        key = ev["idempotencyKey"]
        if type(key) is not str or not key:
            errors.append({"index": index, "field": "idempotencyKey",
                           "message": "idempotencyKey must be a non-empty string"})

    ts_us = None
    if "timestamp" in ev:
        ts = ev["timestamp"]
        if type(ts) is not str:
            errors.append({"index": index, "field": "timestamp",
                           "message": "timestamp must be an ISO 8601 string"})
        else:
            ts_us = tcache.get(ts)
            if ts_us is None:
                ts_us = parse_ts_us(ts)
                if ts_us is None:
                    errors.append({"index": index, "field": "timestamp",
                                   "message": "timestamp %r is not a valid ISO 8601 date-time with a"
                                              " UTC designator or offset (e.g. 2026-03-06T14:30:00Z)"
                                              % ts})
                    return None
                tcache[ts] = ts_us
            if ts_us > now + MAX_FUTURE_US:
                errors.append({"index": index, "field": "timestamp",
                               "message": "timestamp %r is more than 1 hour in the future" % ts})
    return ts_us


# ----------------------------------------------------------------------------------------------------
# Shared state: events, counters, faults
# ----------------------------------------------------------------------------------------------------

class Refused(Exception):
    """An HTTP error answer raised from deep inside request handling."""

    def __init__(self, status, payload, close=False):
        super().__init__(status)
        self.status, self.payload, self.close = status, payload, close


def _error(status, message, **extra):
    body = {"error": STATUS_ERROR_NAMES.get(status, "error"), "message": message}
    body.update(extra)
    return body


class State:
    """Everything the server remembers.  One lock guards it all."""

    FAULT_KEYS = ("fail_rate", "drop_rate", "drop_after_store_rate", "delay_ms", "script",
                  "retry_after", "forbidden_keys", "paths", "seed", "pad_bytes")

    def __init__(self, api_key, customers):
        self.lock = threading.Lock()
        self.api_key = api_key
        self.startup_customers = customers
        self.conn_counter = itertools.count(1)
        self.inflight = 0         # a live gauge: /v1 requests being handled right now (never reset)
        self.reset(customers)

    # -- reset and fault configuration ---------------------------------------------------------------

    def reset(self, customers):
        """Forget events, counters and faults (the API key is kept).  Caller holds the lock or is init."""
        self.events = {}          # key -> (event dict as received, ts_us, receipts, received_at_us)
        self.sorted_index = None  # cached sorted [(ts_us, key)], None when stale
        self.customers = customers
        self.clear_faults()
        self.requests = 0
        self.by_status = collections.Counter()
        self.events_received = 0
        self.events_rejected = 0
        self.batches = 0
        self.max_batch = 0
        self.batches_with_repeated_keys = 0
        self.max_concurrent = self.inflight
        self.user_agents = set()
        self.request_log = collections.deque(maxlen=REQUEST_LOG_SIZE)

    def clear_faults(self):
        self.fail_rate = {}
        self.drop_rate = 0.0
        self.drop_after_store_rate = 0.0
        self.delay_ms = 0
        self.pad_bytes = 0        # answers of /v1 grow a "padding" member this long (huge bodies)
        self.script = collections.deque()
        self.retry_after = "1"
        self.forbidden_keys = set()
        self.paths = None
        self.seed = None
        self.rng = random.Random()

    def fault_config(self):
        return {
            "fail_rate": {str(k): v for k, v in self.fail_rate.items()},
            "drop_rate": self.drop_rate,
            "drop_after_store_rate": self.drop_after_store_rate,
            "delay_ms": self.delay_ms,
            "pad_bytes": self.pad_bytes,
            "script": [str(s) for s in self.script],
            "retry_after": self.retry_after,
            "forbidden_keys": len(self.forbidden_keys),   # a count: keys are never echoed
            "customers": sorted(self.customers) if self.customers is not None else None,
            "paths": sorted(self.paths) if self.paths is not None else None,
            "seed": self.seed,
        }

    def apply_faults(self, cfg):
        """Merge a /_test/faults body into the configuration (validated first: all or nothing)."""
        if type(cfg) is not dict:
            raise Refused(400, _error(400, "body must be a JSON object"))
        unknown = set(cfg) - set(self.FAULT_KEYS) - {"clear", "api_key", "customers"}
        if unknown:
            raise Refused(400, _error(400, "unknown fault settings: %s" % ", ".join(sorted(unknown))))
        new = {}
        try:
            if "fail_rate" in cfg:
                fr = cfg["fail_rate"] or {}
                if type(fr) is not dict:
                    raise ValueError("fail_rate must be an object {status: fraction}")
                new["fail_rate"] = {_status(k): _fraction(v, "fail_rate") for k, v in fr.items()}
                new["fail_rate"] = {k: v for k, v in new["fail_rate"].items() if v > 0}
            for k in ("drop_rate", "drop_after_store_rate"):
                if k in cfg:
                    new[k] = _fraction(cfg[k], k)
            if "delay_ms" in cfg:
                new["delay_ms"] = _nonneg(cfg["delay_ms"], "delay_ms")
            if "pad_bytes" in cfg:
                new["pad_bytes"] = int(_nonneg(cfg["pad_bytes"], "pad_bytes"))
            if "script" in cfg:
                sc = cfg["script"] or []
                if type(sc) is not list:
                    raise ValueError("script must be a list")
                new["script"] = collections.deque(_script_step(s) for s in sc)
            if "retry_after" in cfg:
                ra = cfg["retry_after"]
                if type(ra) in (int, float):
                    ra = "%d" % _nonneg(ra, "retry_after")
                elif type(ra) is not str or not ra or "\n" in ra or "\r" in ra:
                    raise ValueError("retry_after must be a number of seconds or an HTTP-date")
                new["retry_after"] = ra
            if "forbidden_keys" in cfg:
                new["forbidden_keys"] = set(_str_list(cfg["forbidden_keys"], "forbidden_keys"))
            if "paths" in cfg:
                new["paths"] = (None if cfg["paths"] is None
                                else set(_str_list(cfg["paths"], "paths")))
            if "customers" in cfg:
                c = cfg["customers"]
                new["customers"] = None if c is None else set(
                    _str_list(c.split(",") if type(c) is str else c, "customers"))
            if "api_key" in cfg:
                if type(cfg["api_key"]) is not str or not cfg["api_key"]:
                    raise ValueError("api_key must be a non-empty string")
                new["api_key"] = cfg["api_key"]
            if "seed" in cfg:
                if cfg["seed"] is not None and type(cfg["seed"]) not in (int, str):
                    raise ValueError("seed must be an integer or a string")
                new["seed"] = cfg["seed"]
        except (ValueError, TypeError) as e:
            raise Refused(400, _error(400, str(e)))
        if cfg.get("clear"):
            self.clear_faults()
        for k, v in new.items():
            setattr(self, k, v)
        if "seed" in new:
            self.rng = random.Random(new["seed"])
        return self.fault_config()

    def pick_fault(self, path):
        """Decide the fate of one /v1 request: None (serve it), "drop", "drop_after_store" or a status."""
        if self.paths is not None and path not in self.paths:
            return None
        if self.script:
            step = self.script.popleft()
            return None if step == "ok" else step
        if not (self.fail_rate or self.drop_rate or self.drop_after_store_rate):
            return None
        r = self.rng.random()
        acc = 0.0
        for status, rate in self.fail_rate.items():
            acc += rate
            if r < acc:
                return status
        acc += self.drop_rate
        if r < acc:
            return "drop"
        acc += self.drop_after_store_rate
        if r < acc:
            return "drop_after_store"
        return None

    # -- events ---------------------------------------------------------------------------------------

    def store(self, events, times, now):
        """Store validated events (latest version of a key wins).  Returns the keys used.  Each key
        keeps the last HISTORY versions received, in order; a batch carrying two versions of one key
        is counted."""
        keys = []
        new_key = uuid4_strings(sum(1 for ev in events if "idempotencyKey" not in ev))
        with self.lock:
            st = self.events
            for ev, ts in zip(events, times):
                key = ev.get("idempotencyKey")
                if key is None:
                    key = next(new_key)
                old = st.get(key)
                history = (old[4] + [ev])[-HISTORY:] if old else [ev]
                st[key] = (ev, now if ts is None else ts, old[2] + 1 if old else 1, now, history)
                keys.append(key)
            if len(set(keys)) != len(keys):
                self.batches_with_repeated_keys += 1
            self.sorted_index = None
            self.events_received += len(events)
        return keys

    def index(self):
        """The events ordered by (timestamp, key), rebuilt lazily after a change.  Caller holds lock."""
        if self.sorted_index is None:
            self.sorted_index = sorted((rec[1], key) for key, rec in self.events.items())
        return self.sorted_index


def uuid4_strings(n):
    """An iterator of n random (version 4) UUID strings, from one os.urandom call (uuid.uuid4() makes
    one system call per UUID, which is too slow for a batch of 10,000 events without keys)."""
    h = os.urandom(16 * n).hex()
    for i in range(0, 32 * n, 32):
        u = h[i:i + 32]
        yield "%s-%s-4%s-%s%s-%s" % (u[:8], u[8:12], u[13:16], "89ab"[int(u[16], 16) & 3], u[17:20],
                                     u[20:])


def _status(v):
    s = int(v)
    if not 100 <= s <= 599:
        raise ValueError("invalid HTTP status %r" % (v,))
    return s


def _fraction(v, what):
    f = float(v)
    if not 0.0 <= f <= 1.0:
        raise ValueError("%s must be between 0 and 1" % what)
    return f


def _nonneg(v, what):
    f = float(v)
    if not f >= 0:
        raise ValueError("%s must be >= 0" % what)
    return f


def _str_list(v, what):
    if type(v) is not list or any(type(x) is not str for x in v):
        raise ValueError("%s must be a list of strings" % what)
    return [x for x in v if x]


def _pad(payload, pad):
    """An answer grown by a "padding" member of pad bytes (a huge body), or as it is."""
    if pad and type(payload) is dict:
        return dict(payload, padding="x" * pad)
    return payload


def _script_step(s):
    if type(s) is str and s.lower() in ("ok", "drop", "drop_after_store"):
        return s.lower()
    if type(s) is bool:
        raise ValueError("invalid script step %r" % (s,))
    try:
        return _status(s)
    except (ValueError, TypeError):
        raise ValueError('invalid script step %r (a status, "ok", "drop" or "drop_after_store")'
                         % (s,)) from None


def _reject_constant(name):
    raise ValueError("invalid JSON constant " + name)


_json_decoder = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json(body):
    try:
        return _json_decoder.decode(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise Refused(400, _error(400, "body is not valid JSON: %s" % e, error="invalid_json"))


def dump_json(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def event_out(key, rec):
    """A stored event in the ingestion shape, with its key and (receive time if none) timestamp."""
    ev, ts, _, recv = rec[:4]
    out = dict(ev)
    out["idempotencyKey"] = key
    if "timestamp" not in ev:
        out["timestamp"] = format_us(recv)
    return out


# ----------------------------------------------------------------------------------------------------
# HTTP
# ----------------------------------------------------------------------------------------------------

class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, state, verbose=False, tls=None):
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.state, self.verbose, self.tls = state, verbose, tls
        super().__init__(addr, Handler)

    def finish_request(self, request, client_address):
        # Runs in the connection's own thread, so a slow TLS handshake never blocks accept().
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as e:
                if self.verbose:
                    sys.stderr.write("monk_api: TLS handshake failed: %s\n" % e)
                return
        super().finish_request(request, client_address)

    def handle_error(self, request, client_address):
        if self.verbose:
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    """One connection; handles its requests in turn (HTTP/1.1 keep-alive).

    Events API (Authorization: Bearer <key> required):
        POST /v1/events            one event            -> 202 {"idempotencyKey"}
        POST /v1/events/batch      {"events": [...]}    -> 202 {"accepted": n}
        GET  /v1/events            list, paginated      -> 200 {"data", "hasMore", "nextCursor"}
        POST /v1/usage/cost        aggregate            -> 200 {..., "eventCount", "cost"}

    Control API (no auth, JSON):
        POST /_test/reset          forget events, counters and faults (body may set api_key/customers)
        GET|POST /_test/faults     read / merge the fault configuration ({"clear": true} clears first)
        GET  /_test/events         {"events": {key: {"event", "receipts", "receivedAt"}}, "count"}
                                   ?history=1 -> each key also has "history": its last versions in order
                                   ?keys_only=1 -> {"keys": [sorted], "count"}
        GET  /_test/stats          counters
        POST /_test/lose           {"keys": [...]} -> the API "loses" those events
        GET  /_test/requests?last=N  the last N /v1 requests (never their Authorization header)
    """

    protocol_version = "HTTP/1.1"
    server_version = "monk-api-local/0.1"
    sys_version = ""
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT_S

    V1_ROUTES = {
        "/v1/events": {"POST": "v1_ingest_one", "GET": "v1_list"},
        "/v1/events/batch": {"POST": "v1_ingest_batch"},
        "/v1/usage/cost": {"POST": "v1_usage_cost"},
    }
    TEST_ROUTES = {
        "/_test/reset": {"POST": "t_reset"},
        "/_test/faults": {"POST": "t_faults", "GET": "t_faults"},
        "/_test/events": {"GET": "t_events"},
        "/_test/stats": {"GET": "t_stats"},
        "/_test/lose": {"POST": "t_lose"},
        "/_test/requests": {"GET": "t_requests"},
    }

    def setup(self):
        super().setup()
        self.conn_id = next(self.server.state.conn_counter)
        self.conn_seq = 0

    def log_message(self, format, *args):
        if self.server.verbose:
            sys.stderr.write("monk_api: %s %s\n" % (self.address_string(), format % args))

    # every method goes through the same dispatcher, so unknown methods get 405 rather than 501
    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    # -- plumbing -------------------------------------------------------------------------------------

    def send(self, status, payload, headers=None):
        """Send a whole answer in one write: status line, headers, Content-Length, JSON body."""
        body = dump_json(payload) if payload is not None else b""
        lines = ["HTTP/1.1 %d %s" % (status, self.responses.get(status, ("Unknown",))[0]),
                 "Content-Type: application/json",
                 "Content-Length: %d" % len(body)]
        for k, v in (headers or {}).items():
            lines.append("%s: %s" % (k, v))
        if self.close_connection:
            lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.status_sent = status
        self.record()
        self.wfile.write(head if self.command == "HEAD" else head + body)
        self.log_request(status, len(body))

    def drop(self):
        """Close the connection without any answer."""
        self.close_connection = True
        self.status_sent = "drop"
        self.record()
        self.log_message('"%s" dropped', self.requestline)

    def record(self):
        """Count a /v1 request and log it -- before its answer leaves, so that a client that has its
        answer always finds the request in /_test/stats and /_test/requests."""
        if self.v1_start is None:
            return
        t0, self.v1_start = self.v1_start, None
        state = self.server.state
        ua = self.headers.get("User-Agent")
        entry = {"time": format_us(now_us()), "method": self.command, "path": self.path,
                 "status": self.status_sent, "events": self.n_events,
                 "fault": None if self.fault is None else str(self.fault),
                 "content_type": self.headers.get("Content-Type"), "user_agent": ua,
                 "conn": self.conn_id, "conn_seq": self.conn_seq,
                 "duration_ms": round((time.monotonic() - t0) * 1000.0, 3)}
        with state.lock:
            state.inflight -= 1
            state.by_status[str(self.status_sent)] += 1
            if ua is not None:
                state.user_agents.add(ua)
            state.request_log.append(entry)

    def read_body(self):
        h = self.headers
        if "chunked" in h.get("Transfer-Encoding", "").lower():
            chunks, total = [], 0
            while True:
                line = self.rfile.readline(65537)
                try:
                    size = int(line.split(b";", 1)[0].strip(), 16)
                except ValueError:
                    raise Refused(400, _error(400, "bad chunked encoding"), close=True)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass   # trailers
                    break
                total += size
                if total > MAX_BODY_BYTES:
                    raise Refused(413, _error(413, "request body too large"), close=True)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
            body = b"".join(chunks)
        else:
            cl = h.get("Content-Length")
            if cl is None:
                body = b""
            else:
                try:
                    n = int(cl)
                    if n < 0:
                        raise ValueError
                except ValueError:
                    raise Refused(400, _error(400, "bad Content-Length"), close=True)
                if n > MAX_BODY_BYTES:
                    raise Refused(413, _error(413, "request body too large"), close=True)
                body = self.rfile.read(n)
                if len(body) < n:
                    raise ConnectionError("client closed the connection mid-body")
        enc = h.get("Content-Encoding", "").lower().strip()
        if enc in ("gzip", "x-gzip", "deflate"):
            try:
                body = gzip.decompress(body) if "gzip" in enc else zlib.decompress(body)
            except (OSError, zlib.error, EOFError):
                raise Refused(400, _error(400, "body is not valid %s" % enc))
        return body

    def query(self):
        """Query parameters as a dict of their last values."""
        return {k: v[-1] for k, v in parse_qs(self.url.query, keep_blank_values=True).items()}

    # -- dispatch -------------------------------------------------------------------------------------

    def dispatch(self):
        self.conn_seq += 1
        self.status_sent = None
        self.n_events = None
        self.fault = None
        self.v1_start = None     # set while a /v1 request is being handled and not yet recorded
        self.url = urlsplit(self.path)
        path = self.url.path
        try:
            if path.startswith("/v1/") or path == "/v1":
                self.handle_v1(path)
            elif path.startswith("/_test/"):
                self.handle_control(path)
            else:
                self.read_body()
                self.send(404, _error(404, "no such endpoint: %s" % path))
        except Refused as r:
            if r.close:
                self.close_connection = True
            self.send(r.status, r.payload)
        except (ConnectionError, TimeoutError, socket.timeout):
            self.close_connection = True
        except Exception:  # a bug in this server: say so, loudly
            traceback.print_exc(file=sys.stderr)
            self.close_connection = True
            try:
                self.send(500, _error(500, "monk_api internal error (see its stderr)"))
            except OSError:
                pass

    def route(self, routes, path):
        methods = routes.get(path)
        if methods is None:
            raise Refused(404, _error(404, "no such endpoint: %s" % path))
        name = methods.get(self.command)
        if name is None:
            raise Refused(405, _error(405, "%s not allowed on %s" % (self.command, path)))
        return getattr(self, name)

    def handle_control(self, path):
        body = self.read_body()
        fn = self.route(self.TEST_ROUTES, path)
        arg = None
        if self.command == "POST":
            arg = parse_json(body) if body.strip() else {}
            if type(arg) is not dict:
                raise Refused(400, _error(400, "body must be a JSON object"))
        self.send(200, fn(arg))

    def handle_v1(self, path):
        """An Events API request: faults first, then auth, then the endpoint; counted and logged."""
        state = self.server.state
        self.v1_start = time.monotonic()
        with state.lock:
            state.requests += 1
            state.inflight += 1
            if state.inflight > state.max_concurrent:
                state.max_concurrent = state.inflight
        try:
            try:
                body = self.read_body()
            except Refused as r:
                self.close_connection = self.close_connection or r.close
                self.send(r.status, r.payload)
                return
            with state.lock:
                fault = self.fault = state.pick_fault(path)
                delay = state.delay_ms / 1000.0
                retry_after = state.retry_after
                pad = state.pad_bytes
            if fault is not None and fault != "drop_after_store":
                if delay:
                    time.sleep(delay)
                if fault == "drop":
                    self.drop()
                else:
                    headers = {"Retry-After": retry_after} if fault in (429, 503) else None
                    self.send(fault, _pad(_error(fault, "injected fault"), pad), headers)
                return
            try:
                self.check_auth()
                status, payload, headers = self.route(self.V1_ROUTES, path)(body)
            except Refused as r:
                status, payload, headers = r.status, r.payload, None
                if r.close:
                    self.close_connection = True
            if delay:
                time.sleep(delay)
            if fault == "drop_after_store":
                self.drop()
            else:
                self.send(status, _pad(payload, pad), headers)
        finally:
            self.record()   # no-op if the answer (or drop) already recorded it

    def check_auth(self):
        state = self.server.state
        auth = self.headers.get("Authorization", "")
        scheme, _, token = auth.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused(401, {"error": "unauthorized", "message": "missing Bearer token"})
        with state.lock:
            forbidden = token in state.forbidden_keys
            ok = token == state.api_key
        if forbidden:
            raise Refused(403, {"error": "forbidden", "message": "this API key may not ingest events"})
        if not ok:
            raise Refused(401, {"error": "unauthorized", "message": "invalid API key"})

    # -- Events API -----------------------------------------------------------------------------------

    def validate(self, events):
        """Validate a list of events; returns their times, or raises the 400 for the whole request."""
        state = self.server.state
        now = now_us()
        customers = state.customers
        errors, tcache = [], {}
        times = [validate_event(ev, i, now, customers, errors, tcache) for i, ev in enumerate(events)]
        if errors:
            bad = len({e["index"] for e in errors})
            with state.lock:
                state.events_rejected += bad
            if len(events) == 1:
                msg = errors[0]["field"] + ": " + errors[0]["message"]
            else:
                msg = ("%d of %d events are invalid; the batch was refused and nothing was stored"
                       % (bad, len(events)))
            raise Refused(400, {"error": "validation_error", "message": msg, "errors": errors})
        return times, now

    def v1_ingest_one(self, body):
        ev = parse_json(body)
        self.n_events = 1
        times, now = self.validate([ev])
        key = self.server.state.store([ev], times, now)[0]
        return 202, {"idempotencyKey": key}, None

    def v1_ingest_batch(self, body):
        doc = parse_json(body)
        events = doc.get("events") if type(doc) is dict else None
        if type(events) is not list:
            raise Refused(400, _error(400, 'body must be a JSON object with an "events" array',
                                      error="invalid_request"))
        n = self.n_events = len(events)
        if n > MAX_BATCH_EVENTS:
            raise Refused(413, _error(413, "a batch holds at most %d events (got %d)"
                                      % (MAX_BATCH_EVENTS, n)))
        if n == 0:
            raise Refused(400, _error(400, "a batch holds 1 to %d events (got 0)" % MAX_BATCH_EVENTS,
                                      error="invalid_request"))
        times, now = self.validate(events)
        state = self.server.state
        state.store(events, times, now)
        with state.lock:
            state.batches += 1
            if n > state.max_batch:
                state.max_batch = n
        return 202, {"accepted": n}, None

    @staticmethod
    def time_bound(value, field):
        if value is None:
            return None
        us = parse_query_time_us(value) if type(value) is str else None
        if us is None:
            raise Refused(400, _error(400, "%s must be an ISO 8601 date or date-time, got %r"
                                      % (field, value), error="invalid_request"))
        return us

    @staticmethod
    def matcher(cust, ext, name):
        def match(ev):
            return ((cust is None or ev.get("customerId") == cust)
                    and (ext is None or ev.get("externalCustomerId") == ext)
                    and (name is None or ev.get("eventName") == name))
        return match

    def v1_list(self, body):
        q = self.query()
        try:
            limit = int(q.get("limit", LIST_DEFAULT_LIMIT))
        except ValueError:
            limit = -1
        if not 1 <= limit <= LIST_MAX_LIMIT:
            raise Refused(400, _error(400, "limit must be an integer from 1 to %d" % LIST_MAX_LIMIT,
                                      error="invalid_request"))
        start = self.time_bound(q.get("start"), "start")
        end = self.time_bound(q.get("end"), "end")
        after = None
        if q.get("cursor"):
            try:
                c = json.loads(base64.urlsafe_b64decode(q["cursor"].encode("ascii")))
                after = (int(c[0]), str(c[1]))
            except (ValueError, TypeError, IndexError, KeyError, binascii.Error):
                raise Refused(400, _error(400, "invalid cursor", error="invalid_request"))
        match = self.matcher(q.get("customerId"), q.get("externalCustomerId"), q.get("eventName"))
        state = self.server.state
        page = []
        with state.lock:
            idx, st = state.index(), state.events
            pos = bisect.bisect_left(idx, (start,)) if start is not None else 0
            if after is not None:
                pos = max(pos, bisect.bisect_right(idx, after))
            for i in range(pos, len(idx)):
                ts, key = idx[i]
                if end is not None and ts >= end:
                    break
                rec = st[key]
                if match(rec[0]):
                    page.append((ts, key, rec))
                    if len(page) > limit:
                        break
        has_more = len(page) > limit
        page = page[:limit]
        cursor = None
        if has_more:
            cursor = base64.urlsafe_b64encode(dump_json([page[-1][0], page[-1][1]])).decode("ascii")
        return 200, {"data": [event_out(k, rec) for _, k, rec in page],
                     "hasMore": has_more, "nextCursor": cursor}, None

    def v1_usage_cost(self, body):
        doc = parse_json(body)
        if type(doc) is not dict:
            raise Refused(400, _error(400, "body must be a JSON object", error="invalid_request"))
        for f in ("customerId", "externalCustomerId", "eventName", "start", "end"):
            if f in doc and doc[f] is not None and type(doc[f]) is not str:
                raise Refused(400, _error(400, "%s must be a string" % f, error="invalid_request"))
        price = doc.get("unitPrice", 0.01)
        if type(price) not in (int, float):
            raise Refused(400, _error(400, "unitPrice must be a number", error="invalid_request"))
        start = self.time_bound(doc.get("start"), "start")
        end = self.time_bound(doc.get("end"), "end")
        match = self.matcher(doc.get("customerId"), doc.get("externalCustomerId"), doc.get("eventName"))
        state = self.server.state
        with state.lock:
            n = sum(1 for rec in state.events.values()
                    if (start is None or rec[1] >= start) and (end is None or rec[1] < end)
                    and match(rec[0]))
        out = {f: doc[f] for f in ("customerId", "externalCustomerId", "eventName") if f in doc}
        out.update({"start": doc.get("start"), "end": doc.get("end"), "eventCount": n,
                    "unitPrice": price, "cost": round(n * price, 10)})
        return 200, out, None

    # -- Control API ----------------------------------------------------------------------------------

    def t_reset(self, arg):
        state = self.server.state
        with state.lock:
            if "api_key" in arg:
                if type(arg["api_key"]) is not str or not arg["api_key"]:
                    raise Refused(400, _error(400, "api_key must be a non-empty string"))
                state.api_key = arg["api_key"]
            state.reset(state.startup_customers)
            rest = {k: v for k, v in arg.items() if k != "api_key"}
            if rest:
                state.apply_faults(rest)
            return {"reset": True, "faults": state.fault_config()}

    def t_faults(self, arg):
        state = self.server.state
        with state.lock:
            return state.fault_config() if arg is None else state.apply_faults(arg)

    def t_events(self, arg):
        state = self.server.state
        keys_only = self.query().get("keys_only", "") not in ("", "0", "false")
        history = self.query().get("history", "") not in ("", "0", "false")
        with state.lock:
            if keys_only:
                keys = list(state.events)
            else:
                snap = list(state.events.items())
        if keys_only:
            keys.sort()
            return {"keys": keys, "count": len(keys)}
        return {"events": {k: dict({"event": rec[0], "receipts": rec[2], "receivedAt": format_us(rec[3])},
                                   **({"history": rec[4]} if history else {}))
                           for k, rec in snap},
                "count": len(snap)}

    def t_stats(self, arg):
        state = self.server.state
        with state.lock:
            return {"requests": state.requests, "by_status": dict(state.by_status),
                    "events_received": state.events_received, "events_stored": len(state.events),
                    "events_rejected": state.events_rejected, "batches": state.batches,
                    "max_batch": state.max_batch,
                    "batches_with_repeated_keys": state.batches_with_repeated_keys, "inflight": state.inflight,
                    "max_concurrent": state.max_concurrent,
                    "user_agents": sorted(state.user_agents)}

    def t_lose(self, arg):
        keys = arg.get("keys")
        if type(keys) is not list:
            raise Refused(400, _error(400, 'body must be {"keys": [...]}'))
        state = self.server.state
        with state.lock:
            lost = sum(1 for k in keys if type(k) is str and state.events.pop(k, None) is not None)
            state.sorted_index = None
        return {"lost": lost}

    def t_requests(self, arg):
        try:
            last = int(self.query().get("last", 100))
        except ValueError:
            raise Refused(400, _error(400, "last must be an integer"))
        state = self.server.state
        with state.lock:
            log = list(state.request_log)
        return {"requests": log[-last:] if last > 0 else []}


# ----------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description="Local Monk Events API for tests and the demo.")
    ap.add_argument("--port", type=int, required=True, help="port to listen on (0: pick a free one)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--api-key", default="test_key", help='accepted Bearer key (default "test_key")')
    ap.add_argument("--customers", default=None,
                    help="comma-separated known customers; events for others are refused")
    ap.add_argument("--port-file", default=None, help="write the actual port here once listening")
    ap.add_argument("--tls-cert", default=None, help="PEM certificate (chain): serve HTTPS")
    ap.add_argument("--tls-key", default=None, help="PEM private key for --tls-cert")
    ap.add_argument("--verbose", action="store_true", help="log requests to stderr")
    args = ap.parse_args(argv)

    customers = None
    if args.customers is not None:
        customers = {c.strip() for c in args.customers.split(",") if c.strip()}
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            ap.error("--tls-cert and --tls-key go together")
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.tls_cert, args.tls_key)

    server = Server((args.host, args.port), State(args.api_key, customers), args.verbose, tls)
    port = server.server_address[1]
    if args.port_file:
        tmp = "%s.tmp.%d" % (args.port_file, os.getpid())
        with open(tmp, "w") as f:
            f.write("%d\n" % port)
        os.replace(tmp, args.port_file)
    host = "[%s]" % args.host if ":" in args.host else args.host
    print("monk_api listening on %s://%s:%d" % ("https" if tls else "http", host, port), flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    while not stop.wait(0.5):
        pass
    server.shutdown()
    server.server_close()
    # Skip the interpreter's teardown: freeing a million stored events takes seconds, and there is
    # nothing left to flush but our own streams.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
