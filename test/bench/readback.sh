#!/usr/bin/env bash
# readback.sh -- the memory of read-back: monk_list_events over 2,000,000 events and
# monk_verify_export of a 2,000,000-row table, against the local Monk API (test/monk_api.py).
#
# What it measures: the backend running each call (a new session each, pg_backend_pid() printed first
# by the same psql), its RssAnon (private memory) sampled every 20 ms from /proc/<pid>/status (max
# taken) and its VmHWM at the end; for a tenth of the rows too, so that growth shows.  0.3 held the
# whole result in memory: 477 MB for 1.5 million events listed, about 1 GB for 2 million rows verified.
# Target (issue 23): memory per page and per work_mem, not per result: flat, under 64 MB.
#
# Run:   bash test/bench/readback.sh                 (as root, or as a user who can run PostgreSQL)
#        BENCH_SMALL=1 bash test/bench/readback.sh   (a tenth of the rows: a quick smoke run)
# Needs: PostgreSQL, monk installed, python3.  Not run by CI.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

bench_init readback
BIG=$(scaled 2000000)
SMALL=$((BIG / 10))

pg_start "work_mem = '4MB'"
api_start
point_worker "$API_URL"

# Run the statement $2 in a new session, sampling its backend; sets R_ANON, R_HWM, R_SECS, R_OUT.
run_sampled()
{
	local what=$1 stmt=$2 pid="" psql_pid deadline=$((SECONDS + 60)) t max=0 v
	t=$(now)
	rm -f "$BENCH_TMP/done"
	"${as_user[@]}" "$PGBIN/psql" -X -q -A -t -h "$BENCH_TMP" -p "$PGPORT_BENCH" -U postgres -d postgres \
		-v ON_ERROR_STOP=1 -c "SELECT pg_backend_pid()" -c "$stmt" -c "\\! touch $BENCH_TMP/done" \
		-c "SELECT pg_sleep(1)" >"$BENCH_TMP/run.out" 2>&1 &
	psql_pid=$!
	pid=$(psql_backend_pid "$BENCH_TMP/run.out" "$psql_pid" "$deadline")
	while [ ! -e "$BENCH_TMP/done" ] && [ -d "/proc/$pid" ]; do
		v=$(kb "$pid" RssAnon)
		[ -n "$v" ] && [ "$v" -gt "$max" ] && max=$v
		sleep 0.02
	done
	R_HWM=$(kb "$pid" VmHWM)
	wait "$psql_pid" || { cat "$BENCH_TMP/run.out" >&2; die "$what failed"; }
	R_ANON=$max
	R_SECS=$(since "$t")
	R_OUT=$(sed -n 2p "$BENCH_TMP/run.out")
	note "$what: $R_OUT in $R_SECS s (1 s of it pg_sleep); RssAnon max $(mb "$R_ANON"); VmHWM $(mb "$R_HWM")"
}

make_billing_events "$BIG"
t=$(now)
sql -c "SELECT events_sent FROM monk_batch_export('billing_events')" >/dev/null
note "exported $BIG rows to the local Monk API in $(since "$t") s"
sql -c "CREATE VIEW billing_small AS SELECT * FROM billing_events WHERE id <= $SMALL" >/dev/null

run_sampled "monk_list_events, $SMALL events" \
	"SELECT count(*) FROM monk_list_events(\"end\" => timestamptz '2026-03-15 10:30:00+00' + $SMALL * interval '1 ms' + interval '1 ms')"
LS_ANON=$R_ANON LS_HWM=$R_HWM
run_sampled "monk_list_events, $BIG events" "SELECT count(*) FROM monk_list_events()"
LB_ANON=$R_ANON LB_HWM=$R_HWM
run_sampled "monk_verify_export, $SMALL rows" "SELECT count(*) FROM monk_verify_export('billing_small')"
VS_ANON=$R_ANON VS_HWM=$R_HWM
run_sampled "monk_verify_export, $BIG rows" "SELECT count(*) FROM monk_verify_export('billing_events')"
VB_ANON=$R_ANON VB_HWM=$R_HWM

echo
echo "peak memory of read-back (work_mem 4MB; pages of 1,000 events)"
printf '%-44s %14s %14s\n' "" "RssAnon max" "VmHWM"
printf '%-44s %14s %14s\n' "monk_list_events, $SMALL events" "$(mb "$LS_ANON")" "$(mb "$LS_HWM")"
printf '%-44s %14s %14s\n' "monk_list_events, $BIG events" "$(mb "$LB_ANON")" "$(mb "$LB_HWM")"
printf '%-44s %14s %14s\n' "monk_verify_export, $SMALL rows" "$(mb "$VS_ANON")" "$(mb "$VS_HWM")"
printf '%-44s %14s %14s\n' "monk_verify_export, $BIG rows" "$(mb "$VB_ANON")" "$(mb "$VB_HWM")"
echo "target: flat, under 64 MB"
