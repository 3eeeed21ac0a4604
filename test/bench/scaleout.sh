#!/usr/bin/env bash
# scaleout.sh -- export throughput with N PostgreSQL clusters draining at once to one sink, and no
# default key shared between them (SPEC §10: "default keys never collide across them, and export
# throughput grows with the node count (a benchmark with N clusters)").
#
# What it measures, for N = 1, 2, 4 throwaway clusters on this machine (each as pg_start makes its one:
# shared_buffers 128MB, fsync on, synchronous_commit on; monk.batch_size 10000,
# monk.max_parallel_requests 4, monk.flush_interval 1s; new clusters for every N):
#   * run 1: each cluster's worker is parked on a sink that answers 401 and 500,000 events are queued
#     in each (monk_send without a key: its default keys; the clusters load in parallel); then every
#     cluster is pointed at one nginx answering 202 at once (ALTER SYSTEM in each, then
#     pg_reload_conf() in all of them at the same moment) and the clock runs until every outbox is
#     empty (polled every 100 ms, one cluster at a time, so that polling costs the same whatever N).
#     Reported: the aggregate rate (N x events / that time; median of 3, the Ns interleaved:
#     1 2 4 1 2 4 1 2 4), its ratio to N = 1, and, in the log, when each cluster's last batch was
#     accepted (monk.status.last_success_at, from the release);
#   * run 2: the same, once, to one local Monk API (test/monk_api.py, reset before each N), which
#     keeps one copy per idempotency key: its count of distinct keys (/_test/stats events_stored)
#     must be N x the events per cluster, or the clusters' default keys collided (the bench then
#     fails, after printing every N).  Its rate is the Python API's, which parses every event.
# Not a target: a 2-core machine runs every cluster, worker, nginx and the API itself, so N above
# the cores cannot scale linearly; the figures are what this machine does.
#
# Run:   bash test/bench/scaleout.sh                 (as root, or as a user who can run PostgreSQL; PG_CONFIG picks which)
#        BENCH_SMALL=1 bash test/bench/scaleout.sh   (a tenth of the events: a quick smoke run)
#        SCALEOUT_EVENTS=N       events per cluster in run 1 (default 500000)
#        SCALEOUT_API_EVENTS=N   events per cluster in run 2 (default 500000; the Python API stores
#                                about 60,000 events/s on 2 cores: N=4 takes ~35 s)
#        SCALEOUT_NS="1 2 4"     the cluster counts;  SCALEOUT_RUNS="nginx api"  the runs
#        SCALEOUT_REPEAT=3       drains per N in run 1 (the median counts)
# Needs: PostgreSQL, monk installed, nginx-light, python3, curl.  Not run by CI.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

bench_init scaleout
EVENTS=${SCALEOUT_EVENTS:-$(scaled 500000)}
API_EVENTS=${SCALEOUT_API_EVENTS:-$(scaled 500000)}
NS=${SCALEOUT_NS:-1 2 4}
RUNS=${SCALEOUT_RUNS:-nginx api}
REPEAT=${SCALEOUT_REPEAT:-3}
SO=$("$PGBIN/pg_config" --pkglibdir)/monk.so
SO_MD5=$(md5sum "$SO" | cut -c1-12)
CONF=("monk.max_parallel_requests = 4" "monk.flush_interval = '1s'" "monk.batch_size = 10000")

nginx_start
api_start
note "$(nproc) cores; $("$PGBIN/postgres" --version) ($PGBIN); load average $(cut -d' ' -f1-3 /proc/loadavg); N = $NS; runs: $RUNS"
note "events per cluster: $EVENTS to nginx $NGINX_URL, $API_EVENTS to the local API $API_URL$(
	[ "$API_EVENTS" -lt "$EVENTS" ] && echo " (fewer: the Python API is the slower sink)")"

# ---- N clusters ----------------------------------------------------------------------------------
CL_NAME=()		# per cluster (1..N): name (data directory $BENCH_TMP/NAME, log NAME.log), port
CL_PORT=()

# Start cluster $2 as $1 with the settings pg_start gives its one, plus CONF; sockets all in $BENCH_TMP.
cluster_start()
{
	local name=$1 i=$2 dir=$BENCH_TMP/$1 port
	port=$(free_port)
	CL_NAME[i]=$name
	CL_PORT[i]=$port
	BENCH_CLUSTERS+=("$dir")
	bench_cluster "$dir" "$port" "$BENCH_TMP/$name.log" "${CONF[@]}"
	use_cluster "$i"
	sql -c "CREATE EXTENSION monk" >/dev/null
}

# Make sql, pg_set, load_parked and the other helpers of lib.sh talk to cluster $1.
use_cluster() { PGPORT_BENCH=${CL_PORT[$1]}; BENCH_DATA=$BENCH_TMP/${CL_NAME[$1]}; }

# Stop clusters 1..$1 and remove their data directories (their logs stay).
clusters_stop()
{
	local i
	for ((i = 1; i <= $1; i++)); do
		"${as_user[@]}" "$PGBIN/pg_ctl" -D "$BENCH_TMP/${CL_NAME[$i]}" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
		rm -rf "${BENCH_TMP:?}/${CL_NAME[$i]}"
	done
	BENCH_DATA=""
}

# Start clusters 1..$2 (named $1-nN-cI) and park each worker with $3 events queued, the clusters
# loading in parallel (load_parked: every event queued while the worker is paused, and aged past
# monk.flush_interval).
clusters_load()
{
	local run=$1 n=$2 events=$3 i t pids=()
	for ((i = 1; i <= n; i++)); do
		cluster_start "$run-n$n-c$i" "$i"
	done
	t=$(now)
	for ((i = 1; i <= n; i++)); do
		(use_cluster "$i"; load_parked "$events") >"$BENCH_TMP/${CL_NAME[$i]}.load.log" 2>&1 &
		pids+=($!)
	done
	for ((i = 1; i <= n; i++)); do
		wait "${pids[$((i - 1))]}" || { cat "$BENCH_TMP/${CL_NAME[$i]}.load.log" >&2; die "loading ${CL_NAME[$i]} failed"; }
	done
	note "$run, N=$n: $n cluster(s) started, $events events queued in each (in parallel, workers parked) in $(since "$t") s"
}

# Point every worker (clusters 1..$2) at $1 at once: ALTER SYSTEM in each, then pg_reload_conf() in
# all of them together (which also resumes the parked workers); the clock starts just before the
# reloads.  Then wait (at most $3 s) until every outbox is empty.  Sets DRAIN_S and T0.
release_and_wait()
{
	local url=$1 n=$2 limit=$3 i deadline pids=()
	for ((i = 1; i <= n; i++)); do
		use_cluster "$i"
		sql -c "ALTER SYSTEM SET monk.base_url = '$url'" >/dev/null
	done
	T0=$(now)
	for ((i = 1; i <= n; i++)); do
		(use_cluster "$i"; sql -c "SELECT pg_reload_conf()" >/dev/null) &
		pids+=($!)
	done
	for pid in "${pids[@]}"; do wait "$pid" || die "pg_reload_conf() failed"; done
	# One cluster at a time: once one is empty (no event is queued any more), on to the next.
	deadline=$((SECONDS + limit))
	for ((i = 1; i <= n; i++)); do
		use_cluster "$i"
		wait_outbox_empty "$((deadline > SECONDS ? deadline - SECONDS : 0))" "$BENCH_TMP/${CL_NAME[$i]}.log" ||
			{ note "TIMEOUT after $limit s: ${CL_NAME[$i]}'s outbox" >&2; return 1; }
	done
	DRAIN_S=$(since "$T0")
}

# After a drain of $2 events per cluster (clusters 1..$1): when each cluster's last batch was
# accepted, in seconds from the release (EACH), and a warning unless every cluster's worker sent
# all its events with no dead letter.
cluster_report()
{
	local n=$1 events=$2 i row sent dead last
	EACH=""
	for ((i = 1; i <= n; i++)); do
		use_cluster "$i"
		row=$(sql -F ' ' -c "SELECT coalesce(events_sent, 0), dead_letters,
		                            coalesce(extract(epoch FROM last_success_at)::text, '') FROM monk.status")
		read -r sent dead last <<<"$row"
		EACH+="${EACH:+ }$(awk -v a="$last" -v b="$T0" 'BEGIN { if (a == "") print "?"; else printf "%.2f", a - b }')"
		if [ "$sent" -lt "$events" ] || [ "$dead" != 0 ]; then
			note "WARNING: ${CL_NAME[$i]}: its worker sent $sent events (expected $events), $dead dead letters"
		fi
	done
}

api_stat() { curl -sS --max-time 60 "$API_URL/_test/stats" | python3 -c "import json, sys; print(json.load(sys.stdin)['$1'])"; }

# ---- run 1: nginx answering 202 -------------------------------------------------------------------
declare -A R1_S R1_RUNS R2_S R2_KEYS R2_RECEIVED R2_SAMPLE
failed=0
RUN1=0
RUN2=0
[[ " $RUNS " == *" nginx "* ]] && RUN1=1
[[ " $RUNS " == *" api "* ]] && RUN2=1
if [ "$RUN1" = 1 ]; then
	for ((rep = 1; rep <= REPEAT; rep++)); do
		for n in $NS; do
			clusters_load "nginx$rep" "$n" "$EVENTS"
			release_and_wait "$NGINX_URL" "$n" $((n * EVENTS / 1000 + 60)) || die "the drain to nginx did not finish (N=$n)"
			cluster_report "$n" "$EVENTS"
			R1_RUNS[$n]+="${R1_RUNS[$n]:+ }$DRAIN_S"
			note "nginx$rep, N=$n: every outbox empty $DRAIN_S s after the release ($(rate $((n * EVENTS)) "$DRAIN_S") events/s); each cluster's last batch accepted at $EACH s"
			clusters_stop "$n"
		done
	done
	for n in $NS; do
		# shellcheck disable=SC2086
		R1_S[$n]=$(median ${R1_RUNS[$n]})
	done
fi

# ---- run 2: the local Monk API, distinct keys -------------------------------------------------------
if [ "$RUN2" = 1 ]; then
	for n in $NS; do
		curl -sS --max-time 30 -X POST -H 'Content-Type: application/json' -d '{}' "$API_URL/_test/reset" >/dev/null ||
			die "the local API did not reset"
		clusters_load api "$n" "$API_EVENTS"
		sample=""
		for ((i = 1; i <= n; i++)); do
			use_cluster "$i"
			sample+="${sample:+, }$(sql -c "SELECT idempotency_key FROM monk.outbox ORDER BY id LIMIT 1")"
		done
		R2_SAMPLE[$n]=$sample
		note "api, N=$n: each cluster's first default key: $sample"
		release_and_wait "$API_URL" "$n" $((n * API_EVENTS / 1000 + 60)) || die "the drain to the local API did not finish (N=$n)"
		cluster_report "$n" "$API_EVENTS"
		R2_S[$n]=$DRAIN_S
		R2_KEYS[$n]=$(api_stat events_stored)
		R2_RECEIVED[$n]=$(api_stat events_received)
		note "api, N=$n: every outbox empty $DRAIN_S s after the release (each cluster's last batch accepted at $EACH s); the API received ${R2_RECEIVED[$n]} events, ${R2_KEYS[$n]} distinct keys (expected $((n * API_EVENTS)))"
		[ "${R2_KEYS[$n]}" = $((n * API_EVENTS)) ] || failed=1
		clusters_stop "$n"
	done
fi

# ---- results -------------------------------------------------------------------------------------
echo
echo "$(nproc) cores, $("$PGBIN/postgres" --version); each cluster: monk.batch_size 10000, monk.max_parallel_requests 4"
if [ "$RUN1" = 1 ]; then
	echo "run 1: N clusters x $EVENTS queued events each (default keys), draining at once to one nginx answering 202"
	printf '%-3s %9s %9s %10s %7s  %s\n' "N" "events" "seconds" "events/s" "x N=1" "runs (s; the median counts)"
	base=${R1_S[1]:-}
	for n in $NS; do
		printf '%-3s %9s %9s %10s %7s  %s\n' "$n" $((n * EVENTS)) "${R1_S[$n]}" "$(rate $((n * EVENTS)) "${R1_S[$n]}")" \
			"$([ -n "$base" ] && div "$(rate $((n * EVENTS)) "${R1_S[$n]}")" "$(rate "$EVENTS" "$base")" || echo n/a)" "${R1_RUNS[$n]}"
	done
	echo "(seconds: from the release until every outbox is empty; events/s: N x events / seconds)"
fi
if [ "$RUN2" = 1 ]; then
	echo "run 2: N clusters x $API_EVENTS queued events each (default keys), draining at once to the local Monk API$(
		[ "$API_EVENTS" -lt "$EVENTS" ] && echo " (fewer events than run 1: the Python API is the slower sink)")"
	printf '%-3s %9s %9s %10s %10s %14s %9s  %s\n' "N" "events" "seconds" "events/s" "received" "distinct keys" "expected" "verdict"
	for n in $NS; do
		printf '%-3s %9s %9s %10s %10s %14s %9s  %s\n' "$n" $((n * API_EVENTS)) "${R2_S[$n]}" \
			"$(rate $((n * API_EVENTS)) "${R2_S[$n]}")" "${R2_RECEIVED[$n]}" "${R2_KEYS[$n]}" $((n * API_EVENTS)) \
			"$([ "${R2_KEYS[$n]}" = $((n * API_EVENTS)) ] && echo ok || echo "FAIL: default keys collided")"
	done
	for n in $NS; do echo "  N=$n, each cluster's first default key: ${R2_SAMPLE[$n]}"; done
fi
[ "$(md5sum "$SO" | cut -c1-12)" = "$SO_MD5" ] ||
	note "WARNING: monk.so changed during the run (md5 $SO_MD5, now $(md5sum "$SO" | cut -c1-12), of $(date -u -r "$SO" +%FT%TZ)): clusters started after that ran the new build"
[ "$failed" = 0 ] || die "the local API counted fewer distinct keys than events queued: default keys collided across clusters"
