#!/usr/bin/env bash
# memory.sh -- the memory of the monk worker and of monk_batch_export whatever the backlog (SPEC §9).
#
# What it measures (shared_buffers = 128MB, monk.batch_size 10000, monk.max_parallel_requests 4):
#   * the worker draining a backlog of 100,000 and then of 1,000,000 queued events to nginx (202 at
#     once): its RssAnon (private memory) sampled every 100 ms from /proc/<pid>/status (max taken),
#     and its VmHWM (peak resident set) at the end.  The worker (pid from monk.status) is restarted
#     between the two backlogs, so that each peak is its own;
#   * the worker draining one window of 70,000 keys of 1,000 bytes, each queued twice with the
#     newer version read first (see load_long_keys): the window's keys are not kept in memory;
#   * the worker sending 60,000 events of 2.5 kB around a parked batch whose keys' newer versions
#     wait among them (see load_parked_waiting; the local Monk API in test/);
#   * when monk_batch_export exists: the backend running SELECT * FROM monk_batch_export(
#     'billing_events') of 100,000 and then 1,000,000 rows (a new session each: pg_backend_pid()
#     printed first by the same psql), sampled the same way.
# VmHWM counts the shared memory a process touched (shared_buffers pages: up to 128 MB here), so
# RssAnon is the figure that shows what the process itself allocates.
# Target (SPEC §9): flat (the same for both backlogs) and under 64 MB.
#
# Run:   bash test/bench/memory.sh                 (as root, or as a user who can run PostgreSQL; PG_CONFIG picks which)
#        BENCH_SMALL=1 bash test/bench/memory.sh   (10,000 and 100,000: a quick smoke run)
# Needs: PostgreSQL, monk installed, nginx-light.  Not run by CI.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

bench_init memory
BIG=$(scaled 1000000)
SMALL=$((BIG / 10))
TIMEOUT=$((BIG / 1000 + 60))

pg_start "monk.batch_size = 10000" "monk.max_parallel_requests = 4" "monk.flush_interval = '1s'"
nginx_start

INTERVAL=0.02		# seconds between samples (20 ms: the smoke run's drains take a fraction of a second)

# Sample RssAnon of pid $1 every $INTERVAL s into $2 until the file $3 exists or the process is gone.
sample()
{
	local pid=$1 out=$2 stop=$3 v
	: >"$out"
	while [ ! -e "$stop" ] && [ -d "/proc/$pid" ]; do
		v=$(kb "$pid" RssAnon)
		[ -n "$v" ] && echo "$v" >>"$out"
		sleep "$INTERVAL"
	done
}
maxof() { sort -n "$1" | tail -n 1; }

# Park the worker and queue one window of 2 x $1 events with keys of 1,000 bytes, each key twice,
# the newer versions read first: one session takes its transaction id, a second queues the older
# versions and commits, then the first queues the newer ones (higher ids, older transaction id).
# The worker keeps 4 MB of a window's keys in memory; past that it reads the window's repeated
# keys from the log into a temporary table (before 0.4: a table in memory, 174 MB for 70,000).
load_long_keys()
{
	local n=$1 t fifo=$BENCH_TMP/first.fifo first deadline=$((SECONDS + 30))
	local send="SELECT count(monk_send('api_call', 'cus_' || (i % 1000), jsonb_build_object('v', 'VERSION'),
	                 idempotency_key => 'long_' || i || '_' || repeat('k', 1000))) FROM generate_series(1, $n) i"
	pause_worker
	queue_events 1
	wait_paused
	t=$(now)
	rm -f "$fifo" && mkfifo "$fifo" && chmod 666 "$fifo"
	sql <"$fifo" >"$BENCH_TMP/first.out" 2>&1 &
	first=$!
	exec 9>"$fifo"
	echo "BEGIN; SELECT pg_current_xact_id();" >&9
	until grep -qE '^[0-9]+$' "$BENCH_TMP/first.out"; do
		[ "$SECONDS" -lt "$deadline" ] || die "the first session has no transaction id"
		sleep 0.05
	done
	sql -c "${send/VERSION/old}" >/dev/null
	echo "${send/VERSION/new}; COMMIT;" >&9
	exec 9>&-
	wait "$first" || { cat "$BENCH_TMP/first.out" >&2; die "the first session failed"; }
	note "queued $((2 * n)) events with keys of 1,000 bytes in $(since "$t") s (worker parked)"
}

# A batch parked while newer versions of its keys wait among events that are sent: the local Monk
# API answers the first batch (1,000 events, keys K1..K1000) 500, and with monk.max_retries 0 it
# is parked for monk.retry_max_delay; the same transaction queued $1 newer versions of those keys,
# each followed by 100 events of 2.5 kB, which go meanwhile.  Each waiting version is moved out of
# the events' memory, so that it holds no block of sent events in place (before: 184 MB for 600).
load_parked_waiting()
{
	local n=$1
	pause_worker
	queue_events 1
	wait_paused
	sql -c "ALTER SYSTEM SET monk.max_retries = 0" -c "ALTER SYSTEM SET monk.retry_max_delay = '120s'" \
		-c "ALTER SYSTEM SET monk.batch_size = 1000" >/dev/null
	sql -c "BEGIN" \
		-c "SELECT count(monk_send('api_call', 'cus_1', jsonb_build_object('v', 'v1'), idempotency_key => 'K' || i)) FROM generate_series(1, 1000) i" \
		-c "SELECT count(*) FROM generate_series(1, $n) i, LATERAL (
		      SELECT monk_send('api_call', 'cus_1', jsonb_build_object('v', 'v2'), idempotency_key => 'K' || i)
		      UNION ALL
		      SELECT monk_send('api_call', 'cus_1', jsonb_build_object('pad', repeat('x', 2500)), idempotency_key => 'F' || i || '_' || j)
		        FROM generate_series(1, 100) j) s" \
		-c "COMMIT" >/dev/null
	# the batch of the event sent to the 401 sink goes first, then the 1,000 events
	curl -s -X POST "$API_URL/_test/faults" -d '{"clear": true, "script": ["ok", 500]}' >/dev/null
	W_URL=$API_URL
	W_UNTIL=$(($(sql -c "SELECT events_sent FROM monk.status") + 100 * n))
	note "queued 1,000 events, then $n newer versions of their keys among $((100 * n)) events of 2.5 kB (worker parked)"
}

# The worker draining a backlog of $1 (queued by $2: load_parked unless given); sets W_BASE,
# W_ANON, W_HWM, W_SECS.
worker_run()
{
	local n=$1 pid t sampler
	"${2:-load_parked}" "$n"
	pid=$(worker_pid)
	W_BASE=$(kb "$pid" RssAnon)
	rm -f "$BENCH_TMP/stop"
	sample "$pid" "$BENCH_TMP/anon" "$BENCH_TMP/stop" &
	sampler=$!
	t=$(now)
	point_worker "${W_URL:-$NGINX_URL}"
	if [ -n "${W_UNTIL:-}" ]; then
		# the parked batch and the versions waiting for it stay (and so does the frontier, behind
		# them: the outbox looks full): until the events around them have been sent
		local deadline=$((SECONDS + TIMEOUT))
		until [ "$(sql -c "SELECT events_sent FROM monk.status")" -ge "$W_UNTIL" ]; do
			[ "$SECONDS" -lt "$deadline" ] || die "the events around the parked batch were not sent"
			sleep 0.1
		done
	else
		wait_outbox_empty "$TIMEOUT" || die "the drain did not finish"
	fi
	W_SECS=$(since "$t")
	W_HWM=$(kb "$pid" VmHWM)
	touch "$BENCH_TMP/stop"
	wait "$sampler" || true
	W_ANON=$(maxof "$BENCH_TMP/anon")
	note "worker $pid, backlog $n: drained in $W_SECS s; RssAnon idle $(mb "$W_BASE"), max $(mb "$W_ANON") ($(wc -l <"$BENCH_TMP/anon") samples); VmHWM $(mb "$W_HWM")"
}

# Restart the worker (it is restarted by the postmaster 5 s after it exits).
worker_restart()
{
	local old new deadline=$((SECONDS + 30))
	old=$(worker_pid)
	sql -c "SELECT pg_terminate_backend($old)" >/dev/null
	while :; do
		new=$(sql -c "SELECT worker_pid FROM monk.status WHERE worker_running")
		[ -n "$new" ] && [ "$new" != "$old" ] && break
		[ "$SECONDS" -lt "$deadline" ] || die "the worker did not restart"
		sleep 0.2
	done
}

worker_run "$SMALL"
S_BASE=$W_BASE S_ANON=$W_ANON S_HWM=$W_HWM
worker_restart
worker_run "$BIG"
B_BASE=$W_BASE B_ANON=$W_ANON B_HWM=$W_HWM
LONG=$(scaled 70000)
worker_restart
worker_run "$LONG" load_long_keys
L_BASE=$W_BASE L_ANON=$W_ANON L_HWM=$W_HWM
api_start
worker_restart
worker_run "$(scaled 600)" load_parked_waiting
P_BASE=$W_BASE P_ANON=$W_ANON P_HWM=$W_HWM
unset W_URL W_UNTIL
sql -c "ALTER SYSTEM RESET monk.max_retries" -c "ALTER SYSTEM RESET monk.retry_max_delay" \
	-c "ALTER SYSTEM RESET monk.batch_size" -c "SELECT pg_reload_conf()" >/dev/null

# monk_batch_export of the first $1 rows of billing_events (cursor $2); sets E_ANON, E_HWM.
export_run()
{
	local n=$1 pid="" psql_pid deadline=$((SECONDS + 30)) t
	t=$(now)
	"${as_user[@]}" "$PGBIN/psql" -X -q -A -t -h "$BENCH_TMP" -p "$PGPORT_BENCH" -U postgres -d postgres \
		-v ON_ERROR_STOP=1 -c "SELECT pg_backend_pid()" \
		-c "SELECT * FROM monk_batch_export('billing_events', max_events => $n, cursor_name => '$2')" \
		-c "\\! touch $BENCH_TMP/export.done" -c "SELECT pg_sleep(1)" \
		>"$BENCH_TMP/export.out" 2>&1 &
	psql_pid=$!
	rm -f "$BENCH_TMP/export.done"
	pid=$(psql_backend_pid "$BENCH_TMP/export.out" "$psql_pid" "$deadline")
	# sample while the export runs; its VmHWM once it has returned (the session sleeps 1 s then)
	sample "$pid" "$BENCH_TMP/anon" "$BENCH_TMP/export.done"
	E_HWM=$(kb "$pid" VmHWM)
	wait "$psql_pid" || { cat "$BENCH_TMP/export.out" >&2; die "monk_batch_export failed"; }
	E_ANON=$(maxof "$BENCH_TMP/anon")
	note "export backend $pid, $n rows in $(since "$t") s (1 s of it pg_sleep): $(sed -n 2p "$BENCH_TMP/export.out"); RssAnon max $(mb "$E_ANON") ($(wc -l <"$BENCH_TMP/anon") samples); VmHWM $(mb "$E_HWM")"
}

HAVE_EXPORT=0
if [ "$(sql -c "SELECT count(*) FROM pg_proc WHERE proname = 'monk_batch_export'")" != 0 ]; then
	HAVE_EXPORT=1
	make_billing_events "$BIG"
	sql -c "CHECKPOINT" >/dev/null
	export_run "$SMALL" mem_small
	ES_ANON=$E_ANON ES_HWM=$E_HWM
	sql -c "DELETE FROM monk.sync_state" >/dev/null
	export_run "$BIG" mem_big
	EB_ANON=$E_ANON EB_HWM=$E_HWM
fi

echo
echo "peak memory (shared_buffers 128MB; monk.batch_size 10000, monk.max_parallel_requests 4)"
printf '%-44s %14s %14s %14s\n' "" "RssAnon idle" "RssAnon max" "VmHWM"
printf '%-44s %14s %14s %14s\n' "worker, draining $SMALL" "$(mb "$S_BASE")" "$(mb "$S_ANON")" "$(mb "$S_HWM")"
printf '%-44s %14s %14s %14s\n' "worker, draining $BIG" "$(mb "$B_BASE")" "$(mb "$B_ANON")" "$(mb "$B_HWM")"
printf '%-44s %14s %14s %14s\n' "worker, $LONG keys of 1 kB twice, newest first" "$(mb "$L_BASE")" "$(mb "$L_ANON")" "$(mb "$L_HWM")"
printf '%-44s %14s %14s %14s\n' "worker, a parked batch, $(scaled 600) versions waiting" "$(mb "$P_BASE")" "$(mb "$P_ANON")" "$(mb "$P_HWM")"
if [ "$HAVE_EXPORT" = 1 ]; then
	printf '%-44s %14s %14s %14s\n' "monk_batch_export backend, $SMALL rows" "" "$(mb "$ES_ANON")" "$(mb "$ES_HWM")"
	printf '%-44s %14s %14s %14s\n' "monk_batch_export backend, $BIG rows" "" "$(mb "$EB_ANON")" "$(mb "$EB_HWM")"
else
	echo "monk_batch_export: not available"
fi
echo "target: flat, under 64 MB (RssAnon: private memory; VmHWM also counts shared_buffers pages touched)"
