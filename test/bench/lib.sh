# test/bench/lib.sh -- what the benchmarks in test/bench/ share (sourced, never run by itself).
#
#   bench_init NAME        temporary directory (owned by postgres when run as root), cleanup trap
#   pg_start [CONF...]     a throwaway PostgreSQL cluster (PG_CONFIG's) with monk preloaded (extra postgresql.conf
#                          lines as arguments); sets PGPORT_BENCH; sql / sqlf / pg_set run statements
#   BENCH_CLUSTERS         data directories of further clusters a bench starts itself (stopped on exit)
#   nginx_start            nginx answering 202 on NGINX_URL and 401 on NGINX_401_URL
#   api_start              the local Monk API (test/monk_api.py) on API_URL, key $API_KEY
#   slow_sink_start MS     a sink answering 202 after MS ms on SLOW_URL: nginx reads the body (in C,
#                          as fast as the instant sink), a Python upstream only waits (after nginx_start)
#   queue_events N [SRC]   queue N events in monk.outbox (chunks of 100k, one transaction each)
#   pause_worker / point_worker URL   park the worker on a 401 / send it to URL (ALTER SYSTEM + reload)
#   wait_outbox_empty S    poll every 100 ms (at most S seconds) until monk.outbox is empty
#   now / since T / div A B / pct   timing and arithmetic helpers
#   kb PID FIELD / mb KB   a /proc/<pid>/status figure, in kB and as megabytes
#
# Everything started here is stopped, and the temporary directory removed, on exit.

. "$(dirname "${BASH_SOURCE[0]}")/../pgconfig.sh"
BENCH_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH_SMALL=${BENCH_SMALL:-0}
API_KEY=bench_key

BENCH_TMP=""
BENCH_DATA=""
BENCH_PIDS=()
BENCH_CLUSTERS=()
NGINX_STARTED=0
as_user=()

# Debian's python3 has python3-psycopg2 and python3-requests; another python3 first in PATH may not.
if /usr/bin/python3 -c 'import psycopg2, requests' 2>/dev/null; then
	PY=/usr/bin/python3
else
	PY=python3
fi

die() { printf '%s: %s\n' "${BENCH_NAME:-bench}" "$*" >&2; exit 1; }
note() { printf '# %s\n' "$*"; }

# N, or N/10 with BENCH_SMALL=1 (a quick smoke run).
scaled() { if [ "$BENCH_SMALL" = 1 ]; then echo $(( $1 / 10 )); else echo "$1"; fi; }

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }
# A / B with 2 decimals ("n/a" when B is 0).
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (b + 0 == 0) print "n/a"; else printf "%.2f", a / b }'; }
# The median of the numbers given.
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
# events per second, rounded.
rate() { awk -v n="$1" -v s="$2" 'BEGIN { if (s + 0 == 0) print "n/a"; else printf "%.0f", n / s }'; }

free_port()
{
	"$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

bench_cleanup()
{
	local status=$?
	set +e
	if [ -n "$BENCH_DATA" ] && [ -f "$BENCH_DATA/postmaster.pid" ]; then
		(cd "$BENCH_TMP" && "${as_user[@]}" "$PGBIN/pg_ctl" -D "$BENCH_DATA" -m immediate -w -t 30 stop >/dev/null 2>&1)
	fi
	for dir in "${BENCH_CLUSTERS[@]}"; do
		[ -f "$dir/postmaster.pid" ] &&
			(cd "$BENCH_TMP" && "${as_user[@]}" "$PGBIN/pg_ctl" -D "$dir" -m immediate -w -t 30 stop >/dev/null 2>&1)
	done
	if [ "$NGINX_STARTED" = 1 ] && [ -f "$BENCH_TMP/nginx.pid" ]; then
		kill "$(cat "$BENCH_TMP/nginx.pid")" 2>/dev/null
		for _ in $(seq 50); do [ -f "$BENCH_TMP/nginx.pid" ] || break; sleep 0.1; done
	fi
	for pid in "${BENCH_PIDS[@]}"; do
		kill "$pid" 2>/dev/null
		wait "$pid" 2>/dev/null
	done
	if [ -n "$BENCH_TMP" ] && [ "${BENCH_KEEP:-0}" != 1 ]; then
		rm -rf "$BENCH_TMP"
	fi
	exit "$status"
}

bench_init()
{
	BENCH_NAME=$1
	[ -x "$PGBIN/postgres" ] || die "PostgreSQL $PG_MAJOR is not installed in $PGBIN"
	[ -f "$("$PGBIN/pg_config" --pkglibdir)/monk.so" ] || die "monk is not installed (bash test/setup.sh)"
	BENCH_TMP=$(mktemp -d "/tmp/monk-bench-$BENCH_NAME.XXXXXX")
	chmod 755 "$BENCH_TMP"
	if [ "$(id -u)" -eq 0 ]; then
		chown postgres: "$BENCH_TMP"
		as_user=(runuser -u postgres --)
	fi
	trap bench_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	cd "$BENCH_TMP" || exit 1
	local so
	so=$("$PGBIN/pg_config" --pkglibdir)/monk.so
	note "$BENCH_NAME: $(date -u +%FT%TZ), $(nproc) CPUs, monk.so of $(date -u -r "$so" +%FT%TZ) (md5 $(md5sum "$so" | cut -c1-12)), $(uname -r), temp dir $BENCH_TMP$([ "$BENCH_SMALL" = 1 ] && echo ", BENCH_SMALL=1 (10x fewer rows)")"
}

# initdb a throwaway cluster in $1 and start it on port $2, logging to $3,
# with monk preloaded and the benchmarks' settings, plus the lines that follow
# (later lines win).
bench_cluster()
{
	local dir=$1 port=$2 log=$3 line
	shift 3
	"${as_user[@]}" "$PGBIN/initdb" -D "$dir" -U postgres --auth=trust --encoding=UTF8 --no-locale \
		>"$log.initdb" 2>&1 || { cat "$log.initdb" >&2; die "initdb failed ($dir)"; }
	{
		echo "port = $port"
		echo "listen_addresses = ''"
		echo "unix_socket_directories = '$BENCH_TMP'"
		echo "shared_preload_libraries = 'monk'"
		echo "shared_buffers = 128MB"
		echo "max_wal_size = 8GB"
		echo "checkpoint_timeout = 30min"
		echo "timezone = 'UTC'"
		echo "monk.databases = 'postgres'"
		echo "monk.api_key = '$API_KEY'"
		echo "monk.base_url = 'http://127.0.0.1:9'"
		for line in "$@"; do echo "$line"; done
	} >>"$dir/postgresql.conf"
	"${as_user[@]}" "$PGBIN/pg_ctl" -D "$dir" -l "$log" -w -t 60 start >/dev/null ||
		{ tail -n 30 "$log" >&2; die "the cluster in $dir did not start"; }
}

# Start the cluster.  Arguments: extra postgresql.conf lines (later lines win).
pg_start()
{
	BENCH_DATA=$BENCH_TMP/data
	PGPORT_BENCH=$(free_port)
	bench_cluster "$BENCH_DATA" "$PGPORT_BENCH" "$BENCH_TMP/server.log" "$@"
	sql -c "CREATE EXTENSION monk" >/dev/null
}

# psql on the cluster: unaligned, tuples only, stop at the first error.
sql()
{
	"${as_user[@]}" "$PGBIN/psql" -X -q -A -t -h "$BENCH_TMP" -p "$PGPORT_BENCH" -U postgres -d postgres \
		-v ON_ERROR_STOP=1 "$@"
}

# ALTER SYSTEM SET name = 'value' and reload.
pg_set()
{
	local before
	before=$(sql -c "SELECT pg_conf_load_time()")
	sql -c "ALTER SYSTEM SET $1 = '$2'" -c "SELECT pg_reload_conf()" >/dev/null
	# bounded wait until the postmaster has reloaded (new sessions inherit its load time); the
	# worker, signalled by the postmaster, reloads at the same moment
	local deadline=$((SECONDS + 10))
	until [ "$(sql -c "SELECT pg_conf_load_time() > '$before'")" = t ]; do
		[ "$SECONDS" -lt "$deadline" ] || die "the reload for $1 did not happen"
		sleep 0.05
	done
}

pg_restart()
{
	"${as_user[@]}" "$PGBIN/pg_ctl" -D "$BENCH_DATA" -l "$BENCH_TMP/server.log" -m fast -w -t 60 restart >/dev/null ||
		{ tail -n 30 "$BENCH_TMP/server.log" >&2; die "the cluster did not restart"; }
}

# Wait (at most $2 s, default 30) for a port to accept connections.
wait_port()
{
	local deadline=$((SECONDS + ${2:-30}))
	until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
		[ "$SECONDS" -lt "$deadline" ] || die "nothing listens on port $1 after ${2:-30}s"
		sleep 0.1
	done
}

# nginx (Debian's nginx-light), run as postgres with its files in the temp dir: POST
# /v1/events/batch answers 202 at once (body read and discarded, never parsed) on NGINX_URL;
# everything answers 401 on NGINX_401_URL (used to park the worker: a 401 pauses it until reload).
nginx_start()
{
	command -v nginx >/dev/null || die "nginx is not installed (apt-get install nginx-light)"
	local port port401 portslow
	port=$(free_port)
	port401=$(free_port)
	portslow=$(free_port)
	SLOW_UPSTREAM_PORT=$(free_port)
	mkdir -p "$BENCH_TMP/nginx"
	cat >"$BENCH_TMP/nginx.conf" <<EOF
worker_processes 1;
pid $BENCH_TMP/nginx.pid;
error_log $BENCH_TMP/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $BENCH_TMP/nginx/body;
    proxy_temp_path $BENCH_TMP/nginx/proxy;
    fastcgi_temp_path $BENCH_TMP/nginx/fastcgi;
    uwsgi_temp_path $BENCH_TMP/nginx/uwsgi;
    scgi_temp_path $BENCH_TMP/nginx/scgi;
    client_max_body_size 100m;
    client_body_buffer_size 16m;
    keepalive_timeout 120s;
    keepalive_requests 1000000;
    default_type application/json;
    server {
        listen 127.0.0.1:$port;
        location = /v1/events/batch { return 202 '{"accepted":1}'; }
        location / { return 404 '{"error":"not_found"}'; }
    }
    server {
        listen 127.0.0.1:$port401;
        location / { return 401 '{"error":"unauthorized"}'; }
    }
    # the slow sink (slow_sink_start): nginx reads the body, the upstream only waits
    upstream slow { server 127.0.0.1:$SLOW_UPSTREAM_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$portslow;
        location / {
            proxy_pass http://slow;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
	chown -R "$(stat -c %U "$BENCH_TMP")" "$BENCH_TMP/nginx" "$BENCH_TMP/nginx.conf"
	"${as_user[@]}" nginx -e "$BENCH_TMP/nginx/error.log" -p "$BENCH_TMP/nginx" -c "$BENCH_TMP/nginx.conf" ||
		die "nginx did not start"
	NGINX_STARTED=1
	wait_port "$port"
	wait_port "$port401"
	NGINX_URL=http://127.0.0.1:$port
	NGINX_401_URL=http://127.0.0.1:$port401
	NGINX_SLOW_URL=http://127.0.0.1:$portslow
}

# The local Monk API (test/monk_api.py).
api_start()
{
	rm -f "$BENCH_TMP/api.port"
	python3 "$BENCH_ROOT/test/monk_api.py" --port 0 --port-file "$BENCH_TMP/api.port" --api-key "$API_KEY" \
		>"$BENCH_TMP/api.log" 2>&1 &
	BENCH_PIDS+=($!)
	local deadline=$((SECONDS + 30))
	until [ -s "$BENCH_TMP/api.port" ]; do
		[ "$SECONDS" -lt "$deadline" ] || { cat "$BENCH_TMP/api.log" >&2; die "the local Monk API did not start"; }
		sleep 0.1
	done
	API_URL=http://127.0.0.1:$(head -n 1 "$BENCH_TMP/api.port")
}

# A sink that answers every POST with 202 after $1 ms, as a real API's latency: nginx (started by
# nginx_start) reads the whole body, as the instant sink does, and passes only the request on to
# Python's ThreadingHTTPServer (a thread per connection, keep-alive), which waits $1 ms and answers.
# (A Python sink reading the bodies itself costs ~40 ms of CPU per 5,000-event request, which on two
# cores measures the sink more than its clients.)  GET $SLOW_URL/stats: {"requests", "inflight",
# "max_concurrent"}.
slow_sink_start()
{
	local port
	cat >"$BENCH_TMP/slow_sink.py" <<'EOF'
import json, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DELAY = int(sys.argv[2]) / 1000.0
lock = threading.Lock()
stats = {"requests": 0, "inflight": 0, "max_concurrent": 0}

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # GET /stats: requests, most requests in flight at once
        with lock:
            self.answer(200, json.dumps(stats).encode())

    def do_POST(self):
        with lock:
            stats["requests"] += 1
            stats["inflight"] += 1
            stats["max_concurrent"] = max(stats["max_concurrent"], stats["inflight"])
        try:
            n = int(self.headers.get("Content-Length") or 0)
            while n > 0:
                got = self.rfile.read(min(n, 1 << 20))
                if not got:
                    return
                n -= len(got)
            time.sleep(DELAY)
            self.answer(202, b'{"accepted":1}')
        finally:
            with lock:
                stats["inflight"] -= 1

    def log_message(self, *args):
        pass

ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 128
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
EOF
	[ -n "${NGINX_SLOW_URL:-}" ] || die "slow_sink_start needs nginx_start first"
	port=$SLOW_UPSTREAM_PORT
	python3 "$BENCH_TMP/slow_sink.py" "$port" "$1" >"$BENCH_TMP/slow_sink.log" 2>&1 &
	BENCH_PIDS+=($!)
	wait_port "$port"
	SLOW_URL=$NGINX_SLOW_URL
}

# Send the worker to $1 (monk.base_url), effective at once: a reload resumes a paused worker.
point_worker() { pg_set monk.base_url "$1"; }

# Park the worker: the first batch it sends gets a 401 and it pauses, keeping every event queued,
# until the next reload.  Needs nginx_start.  Call wait_paused once events are queued.
pause_worker() { pg_set monk.base_url "$NGINX_401_URL"; }

# Wait (at most 30 s) until the worker has sent a batch to the 401 sink and paused.  Only then may
# it be pointed elsewhere: a 401 that answers a request sent before a reload still pauses it.
wait_paused()
{
	local deadline=$((SECONDS + 30))
	until [ "$(sql -c "SELECT worker_state LIKE 'paused%' FROM monk.status")" = t ]; do
		[ "$SECONDS" -lt "$deadline" ] || die "the worker did not pause on the 401 sink within 30 s"
		sleep 0.1
	done
}

# Queue $1 events with monk_send, in transactions of (at most) 100,000.  The events: 1,000
# customers, 3 properties, an explicit event time; assigned keys (sync_<id>).  With a second
# argument "billing", they are the rows of billing_events (see make_billing_events) instead.
# With a third argument, start at event number $3 instead of 1.
queue_events()
{
	local n=$1 src=${2:-} lo hi
	for ((lo = ${3:-1}; lo <= n; lo += 100000)); do
		hi=$((lo + 99999 < n ? lo + 99999 : n))
		if [ "$src" = billing ]; then
			sql -c "SELECT count(monk_send(event_name, external_customer_id, properties, \"timestamp\", 'sync_' || id))
			          FROM billing_events WHERE id BETWEEN $lo AND $hi" >/dev/null
		else
			sql -c "SELECT count(monk_send('api_call', 'cus_' || (g % 1000),
			                 jsonb_build_object('tokens', g % 500, 'region', 'eu-west-1', 'model', 'gpt-4o-mini'),
			                 timestamptz '2026-03-15 10:30:00+00' + g * interval '1 ms'))
			          FROM generate_series($lo, $hi) g" >/dev/null
		fi
	done
}

# Park the worker and queue events 1..$1 ($2: as in queue_events) so that, when it is pointed
# at a sink, it has read none of them but the first: event 1 alone is queued first, read and
# sent to the 401 sink, which pauses the worker; the others are queued while it is paused.
load_parked()
{
	local t
	pause_worker
	t=$(now)
	queue_events 1 "${2:-}"
	wait_paused
	queue_events "$1" "${2:-}" 2
	note "queued $1 events with monk_send in $(since "$t") s (worker parked)"
	# A backlog, not a trickle: the worker holds a partial batch back until its oldest event has
	# waited monk.flush_interval (1 s here), so let every event be that old before any clock starts.
	local deadline=$((SECONDS + 30))
	until [ "$(sql -c "SELECT coalesce(max(queued_at) < clock_timestamp() - interval '1.1 s', true) FROM monk.outbox")" = t ]; do
		[ "$SECONDS" -lt "$deadline" ] || die "the queued events did not age"
		sleep 0.1
	done
}

# billing_events: the bulk guide's source table, $1 rows with the same content as queue_events.
make_billing_events()
{
	sql -c "CREATE TABLE billing_events (
	            id                   bigint PRIMARY KEY,
	            external_customer_id text NOT NULL,
	            event_name           text NOT NULL,
	            \"timestamp\"          timestamptz NOT NULL,
	            properties           jsonb)" \
	    -c "INSERT INTO billing_events
	          SELECT g, 'cus_' || (g % 1000), 'api_call',
	                 timestamptz '2026-03-15 10:30:00+00' + g * interval '1 ms',
	                 jsonb_build_object('tokens', g % 500, 'region', 'eu-west-1', 'model', 'gpt-4o-mini')
	            FROM generate_series(1, $1) g" \
	    -c "VACUUM ANALYZE billing_events" >/dev/null
}

# A /proc/<pid>/status field ($2) of process $1 in kB ("" once the process is gone); no fork, so
# that it can sample often.  mb: kB as megabytes, "?" when empty.
kb()
{
	local k v rest
	{ while read -r k v rest; do [ "$k" = "$2:" ] && { echo "$v"; return 0; }; done <"/proc/$1/status"; } 2>/dev/null
	return 0
}
mb() { awk -v k="$1" 'BEGIN { if (k == "") print "?"; else printf "%.1f MB", k / 1024 }'; }

outbox_depth() { sql -c "SELECT count(*) FROM monk.outbox"; }

# The backend pid that a psql running in the background (pid $2) printed first
# into file $1 (its "SELECT pg_backend_pid()"); waits until $SECONDS reaches $3.
psql_backend_pid()
{
	local out=$1 psql_pid=$2 deadline=$3 pid=""
	until [ -n "$pid" ]; do
		pid=$(head -n 1 "$out" 2>/dev/null | grep -E '^[0-9]+$' || true)
		kill -0 "$psql_pid" 2>/dev/null || [ -n "$pid" ] || { cat "$out" >&2; die "psql exited early"; }
		[ "$SECONDS" -lt "$deadline" ] || die "no backend pid from psql"
		sleep 0.01
	done
	echo "$pid"
}

# Poll every 100 ms, at most $1 seconds, until monk.outbox is empty ("SELECT EXISTS": the
# same answer as count(*) = 0 without scanning the whole backlog on every poll); on a
# timeout, the end of server log $2 (default: pg_start's) is shown.
wait_outbox_empty()
{
	local deadline=$((SECONDS + $1)) log=${2:-$BENCH_TMP/server.log}
	while [ "$(sql -c "SELECT EXISTS (SELECT 1 FROM monk.outbox)")" != f ]; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			note "TIMEOUT: monk.outbox still holds $(outbox_depth) events after $1 s" >&2
			sql -x -c "SELECT * FROM monk.status" >&2 || true
			tail -n 20 "$log" >&2 || true
			return 1
		fi
		sleep 0.1
	done
}

# Wait (at most 30 s) for the worker to be running and idle or paused; prints its pid.
worker_pid()
{
	local deadline=$((SECONDS + 30)) pid
	while :; do
		pid=$(sql -c "SELECT worker_pid FROM monk.status WHERE worker_running")
		[ -n "$pid" ] && { echo "$pid"; return 0; }
		[ "$SECONDS" -lt "$deadline" ] || die "the monk worker is not running"
		sleep 0.2
	done
}

# The size on disk of the outbox's segments (monk.log_N, indexes included), in bytes.
log_bytes()
{
	sql -c "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c
	         WHERE c.relnamespace = 'monk'::regnamespace AND c.relname LIKE 'log\_%'"
}

# The outbox's size after a drain: at once, and once the settled segments have been truncated
# (the worker truncates them on its own within seconds; waited for at most 30 s).
outbox_size()
{
	local at_once deadline=$((SECONDS + 30))
	at_once=$(log_bytes)
	until [ "$(log_bytes)" -lt 1000000 ]; do
		[ "$SECONDS" -lt "$deadline" ] || break
		sleep 0.2
	done
	echo "segments $(( at_once / 1024 )) kB when drained, $(( $(log_bytes) / 1024 )) kB after $((30 - (deadline - SECONDS))) s"
}
