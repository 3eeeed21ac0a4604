#!/usr/bin/env bash
# python_loop.sh -- monk against the alternative a user would write: the bulk ingestion guide's own
# Python loop (shared/seeds/001_f2e2938ff8a1357b.txt), on the same rows and the same sink (SPEC §9).
#
# Data: billing_events, 1,000,000 rows (id, external_customer_id, event_name, timestamp, properties).
# The Python loop (psycopg2 + requests, Debian's python3-psycopg2 and python3-requests) keeps the
# guide's code shape: SELECT id, external_customer_id, event_name, timestamp, properties FROM
# billing_events WHERE id > %s ORDER BY id LIMIT 10000; chunk into 5,000; build the dicts;
# requests.post(API_URL, json=payload, headers=HEADERS) per batch, sequentially.  (One change the
# guide needs to run at all: the timestamp, a datetime, is turned into ISO 8601 text first.)
# monk: the same 1,000,000 rows queued in monk.outbox with monk_send (worker parked while loading,
# as in drain.sh), then the time the worker takes to drain them to the sink (monk.batch_size 5000,
# the guide's request size; monk.max_parallel_requests 4, and 16 at (ii)).  And, when it exists,
# monk_batch_export('billing_events') exporting the table directly.
# Sinks: (i) nginx answering 202 at once; (ii) a Python ThreadingHTTPServer answering 202 after
# 50 ms (a realistic API's latency), the same sink for both tools.
# Targets (SPEC §9): monk never slower at (i); >= 3x the loop's events/s at (ii).
#
# Run:   bash test/bench/python_loop.sh                 (as root, or with the packages installed)
#        BENCH_SMALL=1 bash test/bench/python_loop.sh   (100,000 rows: a quick smoke run)
# Needs: PostgreSQL, monk installed, nginx-light, python3-psycopg2, python3-requests.  Not run by CI.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

bench_init python_loop
"$PY" -c 'import psycopg2, requests' 2>/dev/null ||
	die "needs python3-psycopg2 and python3-requests (apt-get install python3-psycopg2 python3-requests)"
N=$(scaled 1000000)
TIMEOUT=$((N / 1000 + 60))
DELAY_MS=50

pg_start "monk.batch_size = 5000" "monk.max_parallel_requests = 4" "monk.flush_interval = '1s'"
nginx_start
slow_sink_start "$DELAY_MS"
make_billing_events "$N"
note "billing_events: $N rows; nginx $NGINX_URL; ${DELAY_MS} ms sink $SLOW_URL; python $PY"

# The guide's loop.  Prints "<events> <seconds>".
cat >"$BENCH_TMP/guide_loop.py" <<'EOF'
import os
import sys
import time

import psycopg2
import psycopg2.extras
import requests

API_URL = sys.argv[2] + "/v1/events/batch"
MONK_API_KEY = os.environ["MONK_API_KEY"]
HEADERS = {
    "Authorization": f"Bearer {MONK_API_KEY}",
    "Content-Type": "application/json",
}
BATCH_SIZE = 5000  # Stay under the 10K limit with margin


def chunk(lst, size):
    for i in range(0, len(lst), size):
        yield lst[i : i + size]


def sync_events(events):
    failed_batches = []

    for i, batch in enumerate(chunk(events, BATCH_SIZE)):
        payload = {
            "events": [
                {
                    "externalCustomerId": e["external_customer_id"],
                    "eventName": e["event_name"],
                    "timestamp": e["timestamp"],
                    "idempotencyKey": f"sync_{e['id']}",
                    "properties": e.get("properties", {}),
                }
                for e in batch
            ]
        }

        resp = requests.post(API_URL, json=payload, headers=HEADERS)

        if resp.status_code == 202:
            print(f"Batch {i+1}: {len(batch)} events accepted", file=sys.stderr)
        elif resp.status_code == 429:
            # Rate limited — back off and retry
            time.sleep(5)
            resp = requests.post(API_URL, json=payload, headers=HEADERS)
            if resp.status_code != 202:
                failed_batches.append(batch)
        else:
            print(f"Batch {i+1} failed: {resp.status_code} {resp.text}", file=sys.stderr)
            failed_batches.append(batch)

    return failed_batches


conn = psycopg2.connect(sys.argv[1])
cur = conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
last_synced_id = 0
total = 0
start = time.monotonic()
while True:
    cur.execute(
        "SELECT id, external_customer_id, event_name, timestamp, properties FROM billing_events"
        " WHERE id > %s ORDER BY id LIMIT 10000", (last_synced_id,))
    events = cur.fetchall()
    if not events:
        break
    for e in events:  # a datetime is not JSON: ISO 8601 text, as the API wants
        e["timestamp"] = e["timestamp"].isoformat()
    failed = sync_events(events)
    if failed:
        sys.exit(f"{len(failed)} batches failed")
    last_synced_id = events[-1]["id"]
    total += len(events)
print(total, "%.3f" % (time.monotonic() - start))
EOF

# The guide's loop against sink $1; sets LOOP_S.
python_loop()
{
	local out
	out=$(MONK_API_KEY=$API_KEY "$PY" "$BENCH_TMP/guide_loop.py" \
		"host=$BENCH_TMP port=$PGPORT_BENCH user=postgres dbname=postgres" "$1" 2>"$BENCH_TMP/loop.log") ||
		{ tail -n 5 "$BENCH_TMP/loop.log" >&2; die "the Python loop failed"; }
	[ "${out% *}" = "$N" ] || die "the Python loop sent ${out% *} events, expected $N"
	LOOP_S=${out#* }
}

# monk's worker draining the same rows, queued in the outbox, to sink $1; sets DRAIN_S.
monk_drain()
{
	local t
	load_parked "$N" billing
	sql -c "VACUUM ANALYZE monk.log" -c "CHECKPOINT" >/dev/null
	t=$(now)
	point_worker "$1"
	wait_outbox_empty "$TIMEOUT" || die "the drain did not finish"
	DRAIN_S=$(since "$t")
}

# monk_batch_export('billing_events') to sink $1 under cursor $2; sets EXPORT_S ("" on failure).
monk_export()
{
	local t out
	point_worker "$1"
	sql -c "CHECKPOINT" >/dev/null
	t=$(now)
	if out=$(sql -F ' ' -c "SELECT events_sent, events_failed FROM monk_batch_export('billing_events', cursor_name => '$2')" 2>&1); then
		EXPORT_S=$(since "$t")
		note "monk_batch_export to $1: events_sent, events_failed = $out"
		[ "${out%% *}" = "$N" ] || note "WARNING: monk_batch_export sent ${out%% *} events, expected $N"
	else
		note "monk_batch_export failed: $out"
		EXPORT_S=""
	fi
}

python_loop "$NGINX_URL"; LOOP_FAST=$LOOP_S
note "python loop, instant sink: $LOOP_FAST s"
python_loop "$SLOW_URL"; LOOP_SLOW=$LOOP_S
note "python loop, ${DELAY_MS} ms sink: $LOOP_SLOW s"

monk_drain "$NGINX_URL"; MONK_FAST=$DRAIN_S
note "monk worker, instant sink: $MONK_FAST s"
monk_drain "$SLOW_URL"; MONK_SLOW=$DRAIN_S
note "monk worker, ${DELAY_MS} ms sink: $MONK_SLOW s; the sink saw $(curl -sS --max-time 10 "$SLOW_URL/stats")"

# The same with more requests in flight: the latency is hidden by parallelism, so more of it helps.
pg_set monk.max_parallel_requests 16
monk_drain "$SLOW_URL"; MONK_SLOW16=$DRAIN_S
note "monk worker, max_parallel_requests 16, ${DELAY_MS} ms sink: $MONK_SLOW16 s; the sink saw $(curl -sS --max-time 10 "$SLOW_URL/stats")"
pg_set monk.max_parallel_requests 4

EXPORT_FAST="" EXPORT_SLOW=""
if [ "$(sql -c "SELECT count(*) FROM pg_proc WHERE proname = 'monk_batch_export'")" != 0 ]; then
	HAVE_EXPORT=1
	monk_export "$NGINX_URL" bench_fast; EXPORT_FAST=$EXPORT_S
	monk_export "$SLOW_URL" bench_slow; EXPORT_SLOW=$EXPORT_S
else
	HAVE_EXPORT=0
fi

# ---- results -------------------------------------------------------------------------------------
cell() { [ -n "$1" ] && echo "$(rate "$N" "$1")/s ($1 s)" || echo "failed"; }
echo
echo "$N billing_events rows; events/s (seconds)"
printf '%-42s %26s %26s\n' "" "(i) instant nginx" "(ii) ${DELAY_MS} ms sink"
printf '%-42s %26s %26s\n' "guide's Python loop (5000/request, seq.)" "$(cell "$LOOP_FAST")" "$(cell "$LOOP_SLOW")"
printf '%-42s %26s %26s\n' "monk worker (5000/request, 4 parallel)" "$(cell "$MONK_FAST")" "$(cell "$MONK_SLOW")"
printf '%-42s %26s %26s\n' "monk worker / Python loop" "$(div "$LOOP_FAST" "$MONK_FAST")" "$(div "$LOOP_SLOW" "$MONK_SLOW")"
printf '%-42s %26s %26s\n' "  target" ">= 1.00" ">= 3.00"
printf '%-42s %26s %26s\n' "monk worker, max_parallel_requests 16" "" "$(cell "$MONK_SLOW16")"
printf '%-42s %26s %26s\n' "monk worker (16 parallel) / Python loop" "" "$(div "$LOOP_SLOW" "$MONK_SLOW16")"
if [ "$HAVE_EXPORT" = 1 ]; then
	printf '%-42s %26s %26s\n' "monk_batch_export('billing_events')" "$(cell "$EXPORT_FAST")" "$(cell "$EXPORT_SLOW")"
	[ -n "$EXPORT_FAST" ] && [ -n "$EXPORT_SLOW" ] &&
		printf '%-42s %26s %26s\n' "monk_batch_export / Python loop" "$(div "$LOOP_FAST" "$EXPORT_FAST")" "$(div "$LOOP_SLOW" "$EXPORT_SLOW")"
else
	echo "monk_batch_export: not available"
fi
echo "(the worker's figure is the drain of events already queued; queueing them is paid by monk_send at insert time)"
