#!/usr/bin/env bash
# held_snapshot.sh -- the worker's CPU per event under a steady load while a snapshot is held for
# minutes (issue 11, SPEC §9: "under a steady load with a snapshot held for minutes, the CPU per
# event stays flat").
#
# One throwaway cluster, the worker sending to nginx answering 202 at once.  For the whole run:
#   * a REPEATABLE READ transaction that has read something (as pg_dump holds one for its whole
#     run), and a session idle in a transaction that wrote something (it holds a transaction id,
#     so every snapshot's xmin stays behind it);
#   * a steady load: pgbench -R RATE, each transaction one monk_send (synchronous_commit = off).
# Every 10 s: the worker's CPU time (utime + stime of /proc/PID/stat) and monk.status.events_sent.
# Prints the CPU per event (microseconds) in the first and in the last minute, their ratio (flat
# is about 1), the worker's CPU share, the outbox's depth at the end and the index entries the
# worker's reads visited per event (pg_stat_user_indexes on the segments).
#
# Run:   bash test/bench/held_snapshot.sh                  (6 minutes at 5,000 events/s)
#        BENCH_SMALL=1 bash test/bench/held_snapshot.sh    (2 minutes at 1,000 events/s)
#        HELD_MINUTES=10 HELD_RATE=5000 bash test/bench/held_snapshot.sh
# Needs: PostgreSQL (pgbench), monk installed, nginx-light.  Not run by CI.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

bench_init held_snapshot
MINUTES=${HELD_MINUTES:-6}
RATE=${HELD_RATE:-5000}
if [ "$BENCH_SMALL" = 1 ]; then MINUTES=2; RATE=1000; fi
SECS=$((MINUTES * 60))

nginx_start
pg_start "monk.base_url = '$NGINX_URL'" "monk.flush_interval = '100ms'" "synchronous_commit = off"
pid=$(worker_pid)
hz=$(getconf CLK_TCK)
note "$MINUTES minutes at $RATE events/s; worker pid $pid; nginx $NGINX_URL"

# the held snapshot and the idle writer, for the whole run
sql -c "CREATE TABLE held (x int)" >/dev/null
{ echo "BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class;"; echo "SELECT pg_sleep($SECS + 30);"; } |
	sql >/dev/null 2>&1 &
BENCH_PIDS+=($!)
{ echo "BEGIN; INSERT INTO held VALUES (1);"; echo "SELECT pg_sleep($SECS + 30);"; } | sql >/dev/null 2>&1 &
BENCH_PIDS+=($!)

cat >"$BENCH_TMP/send.sql" <<'SQL'
\set t random(1, 100000)
SELECT monk_send('api_call', 'cus_' || (:t % 1000), jsonb_build_object('tokens', :t));
SQL
"${as_user[@]}" "$PGBIN/pgbench" -n -c 2 -j 2 -R "$RATE" -T "$SECS" -f "$BENCH_TMP/send.sql" \
	-h "$BENCH_TMP" -p "$PGPORT_BENCH" -U postgres postgres >"$BENCH_TMP/pgbench.log" 2>&1 &
BENCH_PIDS+=($!)

cpu() { awk '{ print $14 + $15 }' "/proc/$pid/stat"; }
sent() { sql -c "SELECT events_sent FROM monk.status"; }
reads() { sql -c "SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes WHERE schemaname = 'monk' AND relname LIKE 'log\_%'"; }

declare -a C S
start=$(now)
for ((i = 0; i <= SECS / 10; i++)); do
	# sample on a fixed schedule: every 10 s from the start
	target=$(awk -v s="$start" -v i="$i" 'BEGIN { printf "%.3f", s + i * 10 }')
	while awk -v t="$target" -v n="$(now)" 'BEGIN { exit !(n < t) }'; do sleep 0.05; done
	C[i]=$(cpu)
	S[i]=$(sent)
	[ $((i % 6)) -eq 0 ] && note "t=$((i * 10)) s: worker CPU $(div "${C[i]}" "$hz") s, events sent ${S[i]}"
done
last=$((SECS / 10))
grep -q "aborted" "$BENCH_TMP/pgbench.log" && { cat "$BENCH_TMP/pgbench.log" >&2; die "pgbench clients aborted: the load did not hold"; }
READS=$(reads)
DEPTH=$(outbox_depth)
SENT_TOTAL=${S[last]}

# CPU per event (us) between samples a and b
per_event() { awk -v c="$(( ${C[$2]} - ${C[$1]} ))" -v e="$(( ${S[$2]} - ${S[$1]} ))" -v hz="$hz" \
	'BEGIN { if (e == 0) print "n/a"; else printf "%.2f", c / hz * 1e6 / e }'; }
share() { awk -v c="$(( ${C[$2]} - ${C[$1]} ))" -v hz="$hz" 'BEGIN { printf "%.1f%%", c / hz / 60 * 100 }'; }
FIRST=$(per_event 0 6)
LAST=$(per_event $((last - 6)) "$last")

echo
echo "held snapshot: $MINUTES minutes at $RATE events/s (pgbench -R), a REPEATABLE READ snapshot and an idle writer held throughout"
printf '%-40s %14s %12s %12s\n' "" "CPU us/event" "CPU share" "events"
printf '%-40s %14s %12s %12s\n' "first minute" "$FIRST" "$(share 0 6)" "$(( ${S[6]} - ${S[0]} ))"
printf '%-40s %14s %12s %12s\n' "last minute" "$LAST" "$(share $((last - 6)) "$last")" "$(( ${S[last]} - ${S[last - 6]} ))"
echo "last/first: $(div "$LAST" "$FIRST") (flat: about 1)"
echo "index entries read by the worker's reads per event sent: $(div "$READS" "$SENT_TOTAL")"
echo "outbox depth at the end: $DEPTH; $(outbox_size)"
