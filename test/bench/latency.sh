#!/usr/bin/env bash
# latency.sh -- commit-to-received latency at a steady low rate (SPEC §9: a committed event is sent
# within monk.flush_interval + 100 ms when the API is healthy).
#
# One psql session queues 20 events a second for 30 s, one event per (autocommit) transaction, on a
# fixed schedule: monk_send('lat', 'cus', jsonb_build_object('sent_at', extract(epoch from
# clock_timestamp()))), so each event carries the time just before its commit.  The local Monk API
# (test/monk_api.py) records when it received each event (receivedAt in /_test/events, ms
# precision); latency = receivedAt - sent_at.  Run with monk.flush_interval = 1s and 100ms.
# Prints p50, p90, p99 and max per setting, against the bound flush_interval + 100 ms.
#
# Run:   bash test/bench/latency.sh                 (as root, or as a user who can run PostgreSQL; PG_CONFIG picks which)
#        BENCH_SMALL=1 bash test/bench/latency.sh   (3 s per setting: a quick smoke run)
# Needs: PostgreSQL, monk installed, python3.  Not run by CI.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

bench_init latency
RATE=20
SECS=30
[ "$BENCH_SMALL" = 1 ] && SECS=3
COUNT=$((RATE * SECS))

api_start
pg_start "monk.base_url = '$API_URL'" "monk.flush_interval = '1s'"
note "local API $API_URL; $COUNT events at $RATE/s per setting"

# Queue COUNT events on a fixed schedule, keys lat_$1_<i>.
steady()
{
	local tag=$1 i
	{
		echo "SELECT extract(epoch from clock_timestamp()) AS t0 \\gset"
		for ((i = 1; i <= COUNT; i++)); do
			echo "SELECT pg_sleep(greatest(0, :t0 + $i * (1.0 / $RATE) - extract(epoch from clock_timestamp())));"
			echo "SELECT monk_send('lat', 'cus', jsonb_build_object('sent_at', extract(epoch from clock_timestamp())), idempotency_key => 'lat_${tag}_$i');"
		done
	} | sql >/dev/null
}

# p50/p90/p99/max (ms) of the events of tag $1 received by the API, against bound $2 ms.
percentiles()
{
	curl -sS --max-time 60 "$API_URL/_test/events" | python3 -c '
import datetime, json, sys
tag, bound, expected = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
events = json.load(sys.stdin)["events"]
lat = []
for key, rec in events.items():
    if not key.startswith("lat_%s_" % tag):
        continue
    got = datetime.datetime.strptime(rec["receivedAt"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc)
    lat.append((got.timestamp() - float(rec["event"]["properties"]["sent_at"])) * 1000)
lat.sort()
if len(lat) != expected:
    print("WARNING: %d events received, expected %d" % (len(lat), expected), file=sys.stderr)
pick = lambda p: lat[min(len(lat) - 1, int(round(p / 100 * len(lat) + 0.5)) - 1)]
over = sum(1 for x in lat if x > bound)
print("%8.0f %8.0f %8.0f %8.0f %8.0f   %d of %d over" % (pick(50), pick(90), pick(99), lat[-1], bound, over, len(lat)))
' "$1" "$2" "$COUNT"
}

declare -A RESULT
for flush in 1000 100; do
	pg_set monk.flush_interval "${flush}ms"
	steady "$flush"
	wait_outbox_empty 60 || die "the outbox did not drain"
	RESULT[$flush]=$(percentiles "$flush" $((flush + 100)))
	note "flush_interval ${flush}ms: ${RESULT[$flush]}"
done

echo
echo "commit-to-received latency (ms), $COUNT events at $RATE/s, one per transaction, local Monk API"
printf '%-22s %8s %8s %8s %8s %8s   %s\n' "" p50 p90 p99 max bound "events over the bound"
for flush in 1000 100; do
	printf '%-22s %s\n' "flush_interval ${flush}ms" "${RESULT[$flush]}"
done
echo "target: every event within monk.flush_interval + 100 ms (the bound column)"
