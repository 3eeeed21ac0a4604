#!/usr/bin/env bash
# drain.sh -- how fast the monk worker empties a backlog of 500,000 queued events, against the
# floor SPEC §9 sets (issue 11).
#
# What it measures, in one throwaway cluster (shared_buffers 128MB, fsync on, synchronous_commit on):
#   * the floor, as SPEC §9 spells it: the time PostgreSQL itself needs to read and durably delete
#     the same N rendered events, no HTTP: one statement,
#       WITH d AS (DELETE FROM t RETURNING payload) SELECT sum(length(payload)) FROM d
#     over a freshly loaded and checkpointed table of the N events the outbox holds; median of 3;
#   * the drain: N events queued with monk_send while the worker is parked on a sink that answers
#     401, then monk.base_url is pointed at nginx (Debian's nginx-light) answering 202 at once
#     (ALTER SYSTEM + pg_reload_conf(), which also resumes the parked worker), and the time until
#     monk.outbox is empty (polled every 100 ms); monk.batch_size 10000, monk.max_parallel_requests
#     4; median of 3; then once to the local Monk API (test/monk_api.py parses, validates and
#     stores every event);
#   * after each drain: the size of the outbox's segments, at once and once the worker has
#     truncated the settled ones (it does so on its own).
# Targets (issue 11): drain <= 1.25 x the floor (a log that truncates segments can go below 1);
# >= 100,000 events/s to nginx (SPEC §9).
#
# Run:   bash test/bench/drain.sh                 (as root, or as a user who can run PostgreSQL; PG_CONFIG picks which)
#        BENCH_SMALL=1 bash test/bench/drain.sh   (50,000 events: a quick smoke run)
# Needs: PostgreSQL, monk installed, nginx-light, python3.  Not run by CI.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

bench_init drain
N=$(scaled 500000)
TIMEOUT=$((N / 1000 + 60))		# seconds allowed for one drain (at least 1,000 events/s)

pg_start "shared_preload_libraries = 'monk'" \
	"monk.max_parallel_requests = 4" "monk.flush_interval = '1s'" "monk.batch_size = 10000"
nginx_start
api_start
note "events: $N; nginx $NGINX_URL; local API $API_URL"

# Point the worker at $1 and time the drain of what is queued; sets DRAIN_S and SIZE.
drain()
{
	local t
	sql -c "CHECKPOINT" >/dev/null
	t=$(now)
	point_worker "$1"
	wait_outbox_empty "$TIMEOUT" || die "the drain did not finish"
	DRAIN_S=$(since "$t")
	SIZE=$(outbox_size)
}

# ---- the floor ----------------------------------------------------------------------------------
load_parked "$N"
floors=()
for run in 1 2 3; do
	sql -c "DROP TABLE IF EXISTS floor_t" \
		-c "CREATE TABLE floor_t AS SELECT id, event AS payload FROM monk.outbox" \
		-c "VACUUM ANALYZE floor_t" -c "CHECKPOINT" >/dev/null
	t=$(now)
	sql -c "WITH d AS (DELETE FROM floor_t RETURNING payload) SELECT sum(length(payload)) FROM d" >/dev/null
	floors+=("$(since "$t")")
done
sql -c "DROP TABLE floor_t" >/dev/null
FLOOR_S=$(median "${floors[@]}")
note "floor: ${floors[*]} s (median $FLOOR_S s)"

# ---- the drain to nginx, three times -------------------------------------------------------------
drains=()
for run in 1 2 3; do
	[ "$run" = 1 ] || load_parked "$N"
	drain "$NGINX_URL"
	drains+=("$DRAIN_S")
	note "drain $run to nginx: $DRAIN_S s; $SIZE"
done
NGINX_S=$(median "${drains[@]}")
NGINX_SIZE=$SIZE

# ---- the drain to the local Monk API -------------------------------------------------------------
load_parked "$N"
drain "$API_URL"
API_S=$DRAIN_S
received=$(curl -sS --max-time 30 "$API_URL/_test/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["events_stored"])')
[ "$received" = "$N" ] || note "WARNING: the local API stored $received events, expected $N"

# ---- results -------------------------------------------------------------------------------------
row() { printf '%-52s %9s %10s %8s\n' "$1" "$2" "$(rate "$N" "$2")" "$(div "$2" "$FLOOR_S")"; }
echo
echo "drain of $N queued events (monk.batch_size 10000, monk.max_parallel_requests 4)"
printf '%-52s %9s %10s %8s\n' "" "seconds" "events/s" "/floor"
row "floor: WITH d AS (DELETE .. RETURNING) (median of 3)" "$FLOOR_S"
row "drain to nginx 202 (median of 3: ${drains[*]})" "$NGINX_S"
row "drain to the local Monk API" "$API_S"
echo "targets: drain <= 1.25 x the floor; >= 100000 events/s to nginx"
echo "outbox after the drain to nginx: $NGINX_SIZE"
