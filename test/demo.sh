#!/usr/bin/env bash
# The demo of monk, from a bare machine to billing events at the (local) Monk Events API:
#
#   1. test/setup.sh installs what monk needs (Debian packages), then builds and installs monk;
#   2. the local Monk Events API (test/monk_api.py) starts on a free port, and a throwaway PostgreSQL
#      cluster (PG_CONFIG's, test/pgconfig.sh) in a temporary directory, with monk preloaded and sending
#      to that API;
#   3. a table gets a trigger, monk_capture(...), that turns each row into an event with its own
#      idempotency key: the rows of a committed transaction arrive, the row of a rolled-back one never does;
#   4. a correction: an UPDATE of a captured row sends its key again, and the API keeps the new value;
#   5. an outage: while the API answers every request with 503, new events wait in monk.outbox; once it is
#      back they arrive, each once;
#   6. the check: the API holds exactly the committed rows' events, each at its latest value.
#
# Usage: bash test/demo.sh   as root, from a clone of monk, on Debian 12, 13 or testing (nothing else to
# install first); or as any user once monk is installed.  PG_CONFIG=/usr/lib/postgresql/NN/bin/pg_config
# chooses another PostgreSQL.  PostgreSQL refuses to run as root, so as root the cluster runs as
# "postgres".  After the setup the demo takes a few seconds; everything it made is removed on exit.  Exit
# status 0 when the API holds exactly the committed events, each at its latest value.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
. test/failures.sh
monk_trap_errors demo
. test/pgconfig.sh
API_KEY=demo_key
WAIT_SECONDS=30

tmp=""
api_pid=""
datadir=""
as_user=()

heading() { printf '\n== %s\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# Stop the cluster and the API, remove the temporary directory; keep the exit status.
cleanup()
{
	local status=$?
	trap - ERR
	set +e
	if [ -n "$datadir" ] && [ -f "$datadir/postmaster.pid" ]; then
		(cd "$tmp" && "${as_user[@]}" "$PGBIN/pg_ctl" -D "$datadir" -m fast -w -t 30 stop >/dev/null 2>&1)
	fi
	if [ -n "$api_pid" ]; then
		kill "$api_pid" 2>/dev/null
		wait "$api_pid" 2>/dev/null
	fi
	if [ -n "$tmp" ]; then
		rm -rf "$tmp"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
heading "Setting up: Debian packages, build and install of monk (test/setup.sh)"
monk_hint="test/setup.sh says above what failed and what to do"
if [ "$(id -u)" -eq 0 ]; then
	bash test/setup.sh
elif [ -x "$PG_CONFIG" ] && [ -w "$("$PG_CONFIG" --pkglibdir)" ]; then
	bash test/setup.sh
else
	[ -x "$PG_CONFIG" ] || die "PostgreSQL $PG_MAJOR is not installed; run 'bash test/demo.sh' as root"
	if [ ! -f "$("$PG_CONFIG" --pkglibdir)/monk.so" ] ||
		[ ! -f "$("$PG_CONFIG" --sharedir)/extension/monk.control" ]; then
		die "monk is not installed; run 'bash test/setup.sh' (or this script) as root"
	fi
	echo "not root: using the monk installed in $("$PG_CONFIG" --pkglibdir) (run 'bash test/setup.sh' as root to rebuild it)"
fi
monk_hint=""
started=$SECONDS

# The cluster runs as an unprivileged user, in a temporary directory that user owns.
tmp=$(mktemp -d /tmp/monk-demo.XXXXXX)
if [ "$(id -u)" -eq 0 ]; then
	chown postgres: "$tmp"
	as_user=(runuser -u postgres --)
fi
datadir=$tmp/data

# A request to the local API: GET PATH, or POST PATH BODY (Python's urllib: setup.sh installs no curl).
api()
{
	python3 -c 'import sys, urllib.request as u
r = u.Request(sys.argv[1], data=sys.argv[2].encode() if len(sys.argv) > 2 else None)
sys.stdout.write(u.urlopen(r, timeout=10).read().decode())' "$api_url$1" "${@:2}"
}

# ---------------------------------------------------------------------------------------------
heading "Starting the local Monk Events API (test/monk_api.py, API key '$API_KEY')"
python3 "$ROOT/test/monk_api.py" --port 0 --port-file "$tmp/api.port" --api-key "$API_KEY" \
	>"$tmp/api.log" 2>&1 &
api_pid=$!
deadline=$((SECONDS + WAIT_SECONDS))
until [ -s "$tmp/api.port" ]; do
	if ! kill -0 "$api_pid" 2>/dev/null; then
		cat "$tmp/api.log" >&2
		api_pid=""
		die "the local Monk API exited during start-up (its output is above)"
	fi
	[ "$SECONDS" -lt "$deadline" ] || die "the local Monk API did not start within ${WAIT_SECONDS}s"
	sleep 0.2 # a poll, bounded by the deadline
done
api_url=http://127.0.0.1:$(head -n 1 "$tmp/api.port")
echo "listening on $api_url"

# A port for PostgreSQL.  The server listens on a Unix socket in $tmp only (no TCP), so the
# port just names that socket; still pick one that nothing else uses.
pg_port=""
for p in $(seq 54329 54429); do
	if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && [ ! -e "/var/run/postgresql/.s.PGSQL.$p" ]; then
		pg_port=$p
		break
	fi
done
[ -n "$pg_port" ] || die "no free port between 54329 and 54429"

# From here on, work from the temporary directory: the cluster's user may not be able to enter
# the current one.
cd "$tmp"

# ---------------------------------------------------------------------------------------------
heading "Creating a throwaway cluster in $datadir (port $pg_port, socket in $tmp)"
"${as_user[@]}" "$PGBIN/initdb" -D "$datadir" -U postgres --auth=trust --encoding=UTF8 --no-locale \
	>"$tmp/initdb.log" 2>&1 || { cat "$tmp/initdb.log" >&2; die "initdb failed (its output is above)"; }
# monk sends every 200 ms, and retries within a second (the defaults wait longer: a real API's outage
# is seldom over in a second)
cat >>"$datadir/postgresql.conf" <<EOF

# --- monk demo ---
port = $pg_port
listen_addresses = ''
unix_socket_directories = '$tmp'
shared_preload_libraries = 'monk'
monk.databases = 'postgres'
monk.base_url = '$api_url'
monk.api_key = '$API_KEY'
monk.flush_interval = '200ms'
monk.retry_base_delay = '100ms'
monk.retry_max_delay = '1s'
monk.circuit_open_time = '1s'
EOF
sed -n '/^# --- monk demo ---$/,$p' "$datadir/postgresql.conf" | grep -v '^#' | sed "s/^\(monk.api_key = \).*/\1'********'/"
if ! "${as_user[@]}" "$PGBIN/pg_ctl" -D "$datadir" -l "$tmp/server.log" -w -t 60 start >/dev/null; then
	tail -n 30 "$tmp/server.log" >&2
	die "the cluster did not start (the end of its log is above)"
fi
echo "cluster started"

# psql on the demo cluster; stops at the first error.
sql()
{
	"${as_user[@]}" "$PGBIN/psql" -X -h "$tmp" -p "$pg_port" -U postgres -d postgres \
		-v ON_ERROR_STOP=1 "$@"
}

# Wait (at most WAIT_SECONDS) until the query $2 returns true; else show why not and fail.  $1: what for.
wait_for()
{
	local deadline=$((SECONDS + WAIT_SECONDS))
	until [ "$(sql -qAt -c "$2")" = t ]; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			heading "FAILED: $1 did not happen within ${WAIT_SECONDS}s"
			sql -x -c "SELECT * FROM monk.status" || true
			if [ "$(sql -qAt -c "SELECT worker_running FROM monk.status" 2>/dev/null)" = f ]; then
				echo "monk.status says no worker runs for this database: was the server started with monk"
				echo "in shared_preload_libraries, and is the background worker (src/worker.c) built in?"
			fi
			heading "Last lines of the server log ($tmp/server.log)"
			tail -n 30 "$tmp/server.log" || true
			exit 1
		fi
		sleep 0.2 # a poll, bounded by the deadline
	done
}

# The events the API holds, one line each (GET /_test/events).
show_api()
{
	echo "(GET $api_url/_test/events, one line an event)"
	api /_test/events | python3 -c 'import json, sys
for key, e in sorted(json.load(sys.stdin)["events"].items()):
    ev = e["event"]
    print("%-52s %-11s %s  received %d time(s)" % (key, ev["externalCustomerId"],
          json.dumps(ev["properties"], sort_keys=True), e["receipts"]))'
}

# ---------------------------------------------------------------------------------------------
heading "CREATE EXTENSION, a table, and a trigger (monk_capture) that queues one event per row"
sql -q -e <<'SQL'
CREATE EXTENSION monk;

CREATE TABLE api_calls (
    id         bigserial PRIMARY KEY,
    customer   text,
    endpoint   text,
    tokens     int,
    created_at timestamptz DEFAULT now()
);

CREATE TRIGGER api_calls_monk AFTER INSERT OR UPDATE ON api_calls FOR EACH ROW
    EXECUTE FUNCTION monk_capture('api_call', 'external_customer_id=customer',
                                  'properties=endpoint,tokens', 'timestamp=created_at');
SQL
# default keys: sync_, the database's id, the table, the row's id, the event
key_sql="'sync_' || (SELECT id FROM monk.database_id) || '_public.api_calls:' || id || ':api_call'"

# ---------------------------------------------------------------------------------------------
heading "A committed transaction: three rows; before COMMIT, the events they queued (what will be sent)"
sql -q -e <<'SQL'
BEGIN;
INSERT INTO api_calls (customer, endpoint, tokens) VALUES
    ('cus_acme',   '/v1/chat',  150),
    ('cus_acme',   '/v1/embed',  42),
    ('cus_globex', '/v1/chat',  500);
SELECT id, idempotency_key, event FROM monk.outbox_events ORDER BY id;
COMMIT;
SQL

heading "A rolled-back transaction: one row, whose event must never be sent"
echo "BEGIN; INSERT INTO api_calls (customer, endpoint, tokens) VALUES ('cus_initech', '/v1/chat', 9999); ROLLBACK;"
rolled_back_key=$(sql -qAt <<SQL
BEGIN;
INSERT INTO api_calls (customer, endpoint, tokens) VALUES ('cus_initech', '/v1/chat', 9999) RETURNING $key_sql;
ROLLBACK;
SQL
)
echo "rolled back: the row that would have had the idempotency key $rolled_back_key"

heading "The background worker sends the committed events (waiting until monk.outbox is empty)"
wait_for "the delivery of the three events" "SELECT count(*) = 0 FROM monk.outbox"
echo "monk.outbox is empty: the API accepted every committed event.  What it holds:"
show_api

# ---------------------------------------------------------------------------------------------
heading "A correction: the first call used 180 tokens, not 150; its event is sent again, with the same key"
sql -q -e -c "UPDATE api_calls SET tokens = 180 WHERE id = 1;"
wait_for "the delivery of the correction" "SELECT count(*) = 0 FROM monk.outbox"
first_key=$(sql -qAt -c "SELECT $key_sql FROM api_calls WHERE id = 1")
echo "the versions of $first_key the API received, in order (GET /_test/events?history=1):"
api "/_test/events?history=1" | python3 -c 'import json, sys
for v in json.load(sys.stdin)["events"][sys.argv[1]]["history"]:
    print("   ", json.dumps(v["properties"], sort_keys=True))' "$first_key"
echo "the API keeps the latest version of a key, and counts it once"

# ---------------------------------------------------------------------------------------------
heading "An outage: the API answers every request with 503 Service Unavailable (POST /_test/faults)"
api /_test/faults '{"fail_rate": {"503": 1.0}}' >/dev/null
refused=$(sql -qAt -c "SELECT requests_5xx FROM monk.status")
last_id=$(sql -qAt -c "SELECT max(id) FROM api_calls")
sql -q -e <<'SQL'
INSERT INTO api_calls (customer, endpoint, tokens) VALUES
    ('cus_globex', '/v1/embed', 64),
    ('cus_hooli',  '/v1/chat',  320);
SQL
wait_for "two requests refused by the API" \
	"SELECT requests_5xx >= $refused + 2 AND outbox_depth = 2 FROM monk.status"
echo "monk retries with backoff; the two events wait in monk.outbox, committed and safe:"
sql -c "SELECT id, idempotency_key FROM monk.outbox ORDER BY id" \
	-c "SELECT outbox_depth, requests_5xx, worker_state, last_error FROM monk.status"

heading "The API is back (POST /_test/faults {\"clear\": true}): the waiting events are sent"
api /_test/faults '{"clear": true}' >/dev/null
wait_for "the delivery of the events queued during the outage" "SELECT count(*) = 0 FROM monk.outbox"
show_api

heading "SELECT * FROM monk.status"
sql -x -c "SELECT * FROM monk.status"

# ---------------------------------------------------------------------------------------------
heading "Checking: the API holds exactly the committed rows' events, each at its latest value, once"
expected=$(sql -qAt -c "SELECT json_object_agg($key_sql, json_build_object('customer', customer,
	'properties', json_build_object('endpoint', endpoint, 'tokens', tokens))) FROM api_calls")
outage_keys=$(sql -qAt -c "SELECT string_agg($key_sql, ' ') FROM api_calls WHERE id > $last_id")
api /_test/events | python3 -c 'import json, sys
expected, rolled_back, outage = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3].split()
held = json.load(sys.stdin)["events"]
ok = True
for key in sorted(set(expected) | set(held) | {rolled_back}):
    e, h = expected.get(key), held.get(key)
    if key == rolled_back:
        verdict = "rolled back, never arrived" if h is None else "RECEIVED: it was rolled back"
    elif h is None:
        verdict = "MISSING at the API"
    elif e is None:
        verdict = "UNEXPECTED: no committed row has this key"
    elif (h["event"]["externalCustomerId"], h["event"]["properties"]) != (e["customer"], e["properties"]):
        verdict = "WRONG: the API holds %s" % json.dumps(h["event"]["properties"], sort_keys=True)
    elif key in outage and h["receipts"] != 1:
        verdict = "received %d times, once expected" % h["receipts"]
    else:
        verdict = "ok: %s" % json.dumps(e["properties"], sort_keys=True)
    ok = ok and verdict.startswith(("ok", "rolled back"))
    print("%-52s %s" % (key, verdict))
sys.exit(0 if ok else 1)' "$expected" "$rolled_back_key" "$outage_keys" ||
	die "the API does not hold exactly the committed events at their latest values (above)"

heading "Done in $((SECONDS - started)) s after the setup: every committed event arrived once, at its latest value; the rolled-back one never did"
