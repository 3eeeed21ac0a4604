#!/usr/bin/env bash
# drain.sh -- how fast the monk worker empties a backlog of 1,000,000 queued events (SPEC §9, issue 5).
#
# What it measures, in one throwaway cluster (shared_buffers 128MB, fsync on, synchronous_commit on):
#   * the floor: the time PostgreSQL itself needs to read and durably delete the same rows, with no
#     HTTP at all: on a second, identical outbox (floor.outbox: LIKE monk.outbox INCLUDING ALL, the
#     same 1,000,000 rows), "DELETE ... WHERE id IN (SELECT id ... ORDER BY id LIMIT 10000)
#     RETURNING event" repeated until empty, each statement its own (durable) transaction, the
#     events read by psql; and the same planned as an index scan with a keyset cursor (WHERE id >
#     last id deleted), as the worker reads and deletes: see "the floor" below;
#   * the drain: 1,000,000 events queued with monk_send (while the worker is parked on a sink that
#     answers 401), then monk.base_url is pointed at the sink (ALTER SYSTEM + pg_reload_conf(), which
#     also resumes the parked worker) and the time until monk.outbox is empty (polled every 100 ms), to
#       (a) nginx (Debian's nginx-light) answering 202 at once without parsing, monk.batch_size 10000
#           and 5000;
#       (b) the local Monk API (test/monk_api.py: parses, validates and stores every event), 10000.
#     The worker is parked by sending event 1 alone to the 401 sink, so it has read none of the
#     others when the clock starts.  monk.max_parallel_requests 4, monk.flush_interval 1s.  Before each timed phase both tables are
#     VACUUM ANALYZEd and a CHECKPOINT is taken, so that all phases start alike.
#   * after each drain: the outbox's size and dead tuples (pg_stat_user_tables).
# Targets (SPEC §9): >= 100,000 events/s to nginx, and drain time <= 2x the floor.
#
# Run:   bash test/bench/drain.sh                 (as root, or as a user who can run PostgreSQL; PG_CONFIG picks which)
#        BENCH_SMALL=1 bash test/bench/drain.sh   (100,000 events: a quick smoke run)
#        BENCH_PROFILE=1 ...                      (also the worker's statements from pg_stat_statements)
# Needs: PostgreSQL, monk installed, nginx-light, python3.  Not run by CI.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

bench_init drain
N=$(scaled 1000000)
TIMEOUT=$((N / 1000 + 60))		# seconds allowed for one drain (at least 1,000 events/s)
PRELOAD=monk
[ "${BENCH_PROFILE:-0}" = 1 ] && PRELOAD=monk,pg_stat_statements

pg_start "shared_preload_libraries = '$PRELOAD'" \
	"monk.max_parallel_requests = 4" "monk.flush_interval = '1s'" "monk.batch_size = 10000"
[ "$PRELOAD" = monk ] || sql -c "CREATE EXTENSION pg_stat_statements" >/dev/null
nginx_start
api_start
note "events: $N; nginx $NGINX_URL; local API $API_URL"

settle() { sql -c "VACUUM ANALYZE monk.outbox" -c "CHECKPOINT" >/dev/null; }

# Point the worker at $2 with batch size $1 and time the drain; sets DRAIN_S.
drain()
{
	local t
	settle
	[ "${BENCH_PROFILE:-0}" = 1 ] && sql -c "SELECT pg_stat_statements_reset()" >/dev/null
	t=$(now)
	point_worker "$2"
	wait_outbox_empty "$TIMEOUT" || die "the drain did not finish"
	DRAIN_S=$(since "$t")
	[ "$(outbox_depth)" = 0 ] || die "monk.outbox is not empty"
}

profile()
{
	[ "${BENCH_PROFILE:-0}" = 1 ] || return 0
	note "pg_stat_statements (worker's statements during the drain):"
	sql -F ' | ' -c "SELECT calls, round(total_exec_time)::text || ' ms', rows, left(regexp_replace(query, '\s+', ' ', 'g'), 90)
	                   FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'
	                  ORDER BY total_exec_time DESC LIMIT 6" | sed 's/^/#   /'
}

# ---- the floor ----------------------------------------------------------------------------------
# Two copies of the outbox (same rows, same indexes), deleted 10,000 rows per transaction:
#   floor.outbox: as SPEC §9 words it, "WHERE id IN (SELECT id ... ORDER BY id LIMIT 10000)".
#     PostgreSQL plans it as a hash semi join over a sequential scan of the whole table, so each
#     statement reads every row (and dead row) left, and the total grows with the square of N;
#   floor.keyset: "WHERE id = ANY (ARRAY(SELECT id ... WHERE id > <last id of the previous batch>
#     ORDER BY id LIMIT 10000))": an index scan of the 10,000 rows, as the worker deletes them
#     (id = ANY ($1)) -- the true floor.
load_parked "$N"
sql -c "CREATE SCHEMA floor" \
	-c "CREATE TABLE floor.outbox (LIKE monk.outbox INCLUDING ALL)" \
	-c "INSERT INTO floor.outbox SELECT * FROM monk.outbox" \
	-c "CREATE TABLE floor.keyset (LIKE monk.outbox INCLUDING ALL)" \
	-c "INSERT INTO floor.keyset SELECT * FROM monk.outbox" \
	-c "VACUUM ANALYZE floor.outbox, floor.keyset" >/dev/null
# the keyset cursors: 0, then the last id of every 10,000 (computed before the clock starts)
cursors="0 $(sql -c "SELECT string_agg(id::text, ' ' ORDER BY id)
                      FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM floor.keyset) s
                     WHERE n % 10000 = 0")"
stmts=$((N / 10000 + 1))

settle
t=$(now)
for ((i = 0; i < stmts; i++)); do
	echo "DELETE FROM floor.outbox WHERE id IN (SELECT id FROM floor.outbox ORDER BY id LIMIT 10000) RETURNING event;"
done | sql >/dev/null
FLOOR_S=$(since "$t")
[ "$(sql -c "SELECT count(*) FROM floor.outbox")" = 0 ] || die "floor.outbox is not empty"
note "floor: $N rows read and deleted in $stmts transactions of 10,000 in $FLOOR_S s"

settle
t=$(now)
for c in $cursors; do
	echo "DELETE FROM floor.keyset WHERE id = ANY (ARRAY(SELECT id FROM floor.keyset WHERE id > $c ORDER BY id LIMIT 10000)) RETURNING event;"
done | sql >/dev/null
KEYSET_S=$(since "$t")
[ "$(sql -c "SELECT count(*) FROM floor.keyset")" = 0 ] || die "floor.keyset is not empty"
note "index floor: $N rows read and deleted in $(echo "$cursors" | wc -w) transactions in $KEYSET_S s"
sql -c "SET client_min_messages = warning" -c "DROP SCHEMA floor CASCADE" >/dev/null

# ---- (a) nginx, batch 10000 (the events queued above) --------------------------------------------
drain 10000 "$NGINX_URL"
NGINX10_S=$DRAIN_S
NGINX10_BLOAT=$(outbox_bloat)
profile

# ---- (a) nginx, batch 5000 -----------------------------------------------------------------------
pg_set monk.batch_size 5000
load_parked "$N"
drain 5000 "$NGINX_URL"
NGINX5_S=$DRAIN_S
NGINX5_BLOAT=$(outbox_bloat)

# ---- (b) the local Monk API, batch 10000 ---------------------------------------------------------
pg_set monk.batch_size 10000
load_parked "$N"
drain 10000 "$API_URL"
API_S=$DRAIN_S
API_BLOAT=$(outbox_bloat)
received=$(curl -sS --max-time 30 "$API_URL/_test/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["events_stored"])')
[ "$received" = "$N" ] || note "WARNING: the local API stored $received events, expected $N"

# ---- results -------------------------------------------------------------------------------------
row() { printf '%-44s %9s %10s %12s %12s\n' "$1" "$2" "$(rate "$N" "$2")" "$(div "$2" "$FLOOR_S")" "$(div "$2" "$KEYSET_S")"; }
echo
echo "drain of $N queued events (monk.max_parallel_requests 4, monk.flush_interval 1s)"
printf '%-44s %9s %10s %12s %12s\n' "" "seconds" "events/s" "/floor" "/index floor"
row "floor: DELETE..id IN (..LIMIT 10000)" "$FLOOR_S"
row "index floor: DELETE..id = ANY(ARRAY(..))" "$KEYSET_S"
row "(a) nginx 202, batch_size 10000" "$NGINX10_S"
row "(a) nginx 202, batch_size 5000" "$NGINX5_S"
row "(b) local Monk API, batch_size 10000" "$API_S"
echo "targets: >= 100000 events/s to nginx; drain time <= 2.00 x the floor (the index floor is the honest one)"
echo "outbox after (a) 10000: $NGINX10_BLOAT"
echo "outbox after (a) 5000:  $NGINX5_BLOAT"
echo "outbox after (b) 10000: $API_BLOAT"
echo "(each load is queued into the table left by the previous drain, unvacuumed: hence the growth)"
