#!/usr/bin/env bash
# The demo of monk, from nothing to events arriving at the (local) Monk Events API:
#
#   1. test/setup.sh installs the Debian packages and builds and installs monk (as root);
#   2. the local Monk Events API (test/monk_api.py) starts on a free port;
#   3. a throwaway PostgreSQL cluster (PG_CONFIG's, test/pgconfig.sh) starts in a temporary directory with monk preloaded,
#      pointed at that API;
#   4. a table gets an AFTER INSERT trigger, monk_capture(...), that turns each row into an event;
#      rows are inserted in a committed transaction and in a rolled-back one;
#   5. the background worker drains the outbox; the script shows what the API received and
#      checks that the rolled-back row's event never arrived.
#
# Usage: bash test/demo.sh   (as root on Debian 12, 13 or testing; or as any user once the packages and monk
# are installed).  PostgreSQL refuses to run as root, so as root the cluster runs as "postgres".
# Everything is removed on exit.  Exit status 0 when the events arrived as expected.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

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

# The cluster runs as an unprivileged user, in a temporary directory that user owns.
tmp=$(mktemp -d /tmp/monk-demo.XXXXXX)
if [ "$(id -u)" -eq 0 ]; then
	chown postgres: "$tmp"
	as_user=(runuser -u postgres --)
fi
datadir=$tmp/data

# GET a URL (curl when installed, else Python's urllib: setup.sh does not install curl).
http_get()
{
	if command -v curl >/dev/null 2>&1; then
		curl -sS --max-time 10 "$1"
	else
		python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1"
	fi
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
		die "the local Monk API exited during start-up"
	fi
	[ "$SECONDS" -lt "$deadline" ] || die "the local Monk API did not start within ${WAIT_SECONDS}s"
	sleep 0.2
done
api_port=$(head -n 1 "$tmp/api.port")
api_url=http://127.0.0.1:$api_port
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
	>"$tmp/initdb.log" 2>&1 || { cat "$tmp/initdb.log" >&2; die "initdb failed"; }
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
EOF
sed -n '/^# --- monk demo ---$/,$p' "$datadir/postgresql.conf" | grep -v '^#' | sed "s/^\(monk.api_key = \).*/\1'********'/"
if ! "${as_user[@]}" "$PGBIN/pg_ctl" -D "$datadir" -l "$tmp/server.log" -w -t 60 start >/dev/null; then
	tail -n 30 "$tmp/server.log" >&2
	die "the cluster did not start"
fi
echo "cluster started"

# psql on the demo cluster; stops at the first error.
sql()
{
	"${as_user[@]}" "$PGBIN/psql" -X -h "$tmp" -p "$pg_port" -U postgres -d postgres \
		-v ON_ERROR_STOP=1 "$@"
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

# ---------------------------------------------------------------------------------------------
heading "Committed transaction: three rows; before COMMIT, the events they queued (what will be sent)"
sql -q -e <<'SQL'
BEGIN;
INSERT INTO api_calls (customer, endpoint, tokens) VALUES
    ('cus_acme',   '/v1/chat',  150),
    ('cus_acme',   '/v1/embed',  42),
    ('cus_globex', '/v1/chat',  500);
SELECT id, idempotency_key, event FROM monk.outbox_events ORDER BY id;
COMMIT;
SQL
# default keys: sync_, the database's id, the table, the row's id, the event
committed_keys=$(sql -qAt -c "SELECT string_agg('sync_' || (SELECT id FROM monk.database_id) || '_public.api_calls:' || id || ':api_call', ' ' ORDER BY id) FROM api_calls")

# ---------------------------------------------------------------------------------------------
heading "Rolled-back transaction: one row, whose event must never be sent"
echo "BEGIN; INSERT INTO api_calls (customer, endpoint, tokens) VALUES ('cus_initech', '/v1/chat', 9999); ROLLBACK;"
rolled_back_key=$(sql -qAt <<'SQL'
BEGIN;
INSERT INTO api_calls (customer, endpoint, tokens) VALUES ('cus_initech', '/v1/chat', 9999)
    RETURNING 'sync_' || (SELECT id FROM monk.database_id) || '_public.api_calls:' || id || ':api_call';
ROLLBACK;
SQL
)
echo "rolled back: the row that would have sent idempotency key $rolled_back_key"

# ---------------------------------------------------------------------------------------------
heading "Waiting (at most ${WAIT_SECONDS}s) for the background worker to drain monk.outbox"
deadline=$((SECONDS + WAIT_SECONDS))
depth=""
while :; do
	depth=$(sql -qAt -c "SELECT count(*) FROM monk.outbox") || depth="?"
	[ "$depth" = "0" ] && break
	[ "$SECONDS" -lt "$deadline" ] || break
	sleep 0.2
done
if [ "$depth" != "0" ]; then
	heading "FAILED: monk.outbox still holds $depth event(s) after ${WAIT_SECONDS}s"
	sql -x -c "SELECT * FROM monk.status" || true
	running=$(sql -qAt -c "SELECT worker_running FROM monk.status" 2>/dev/null || echo "?")
	if [ "$running" = "f" ]; then
		echo "monk.status says no worker is running for this database: is the background worker"
		echo "(src/worker.c) built into this version of monk?"
	fi
	heading "Last lines of the server log ($tmp/server.log)"
	tail -n 30 "$tmp/server.log" || true
	exit 1
fi
echo "monk.outbox is empty: every committed event was accepted by the API"

# ---------------------------------------------------------------------------------------------
heading "What the local Monk API received (GET $api_url/_test/events)"
echo "\$ curl -s $api_url/_test/events | python3 -m json.tool"
http_get "$api_url/_test/events" | python3 -m json.tool

heading "SELECT * FROM monk.status"
sql -x -c "SELECT * FROM monk.status"

# ---------------------------------------------------------------------------------------------
heading "Checking: every committed event arrived, the rolled-back one never did"
received=$(http_get "$api_url/_test/events?keys_only=1" |
	python3 -c 'import json, sys; print(" ".join(json.load(sys.stdin)["keys"]))')
ok=1
for key in $committed_keys; do
	if [[ " $received " == *" $key "* ]]; then
		echo "committed   $key: received"
	else
		echo "committed   $key: MISSING at the API"
		ok=0
	fi
done
if [[ " $received " == *" $rolled_back_key "* ]]; then
	echo "rolled back $rolled_back_key: RECEIVED by the API -- it must never be sent"
	ok=0
else
	echo "rolled back $rolled_back_key: never arrived at the API (its transaction rolled back, so it was never queued)"
fi
[ "$ok" -eq 1 ] || die "the events received do not match the committed rows"

heading "Done: committed events were delivered, the rolled-back one was not"
