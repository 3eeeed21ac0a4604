#!/usr/bin/env bash
# trigger.sh -- what an AFTER INSERT trigger calling monk_send costs (SPEC §9, issue 5).
#
# pgbench, single-row INSERT transactions (INSERT INTO calls_X (customer, tokens) VALUES (...)),
# 2 clients, 2 threads, 15 s per run, into three identical tables:
#   (a) calls_a: no trigger;
#   (b) calls_b: a hand-written PL/pgSQL AFTER INSERT trigger inserting the same event into a plain
#       logged table plain_outbox (id bigserial PK, key text, event text, queued_at timestamptz
#       default now()) -- the cheapest transactional outbox -- the JSON rendered with
#       jsonb_build_object(...)::text, key 'sync_' || id as monk assigns it;
#   (c) calls_c: a PL/pgSQL AFTER INSERT trigger doing
#       PERFORM monk_send('api_call', NEW.customer, jsonb_build_object('tokens', NEW.tokens)).
# With synchronous_commit = off (CPU cost: no wait for the WAL flush) and with the default (on).
# Each variant runs twice, interleaved (a b c a b c), each run on emptied tables after a CHECKPOINT;
# the better TPS of the two counts.  The worker is pointed at a closed port, so it sends nothing
# during the runs and the events just accumulate.
# Targets (SPEC §9): (c)/(a) >= 0.67 and (c)/(b) >= 0.95.
#
# Run:   bash test/bench/trigger.sh                 (as root, or as a user who can run PostgreSQL; PG_CONFIG picks which)
#        BENCH_SMALL=1 bash test/bench/trigger.sh   (3 s per run: a quick smoke run)
#        BENCH_SECONDS=30 ...                       (another duration per run)
# Needs: PostgreSQL (pgbench), monk installed.  Not run by CI.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

bench_init trigger
SECS=${BENCH_SECONDS:-15}
[ "$BENCH_SMALL" = 1 ] && SECS=${BENCH_SECONDS:-3}

# A closed port: the worker's requests fail at once and back off; nothing is sent.
pg_start "monk.base_url = 'http://127.0.0.1:$(free_port)'"

sql <<'SQL'
CREATE TABLE calls_a (id bigserial PRIMARY KEY, customer text NOT NULL, tokens int NOT NULL,
                      created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE calls_b (id bigserial PRIMARY KEY, customer text NOT NULL, tokens int NOT NULL,
                      created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE calls_c (id bigserial PRIMARY KEY, customer text NOT NULL, tokens int NOT NULL,
                      created_at timestamptz NOT NULL DEFAULT now());

-- (b) the cheapest transactional outbox, written by hand
CREATE TABLE plain_outbox (id bigserial PRIMARY KEY, key text NOT NULL, event text NOT NULL,
                           queued_at timestamptz NOT NULL DEFAULT now());
CREATE FUNCTION calls_b_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    i bigint := nextval('plain_outbox_id_seq');
BEGIN
    INSERT INTO plain_outbox (id, key, event)
    VALUES (i, 'sync_' || i,
            jsonb_build_object('eventName', 'api_call',
                               'externalCustomerId', NEW.customer,
                               'timestamp', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                               'idempotencyKey', 'sync_' || i,
                               'properties', jsonb_build_object('tokens', NEW.tokens))::text);
    RETURN NEW;
END
$$;
CREATE TRIGGER calls_b_outbox AFTER INSERT ON calls_b FOR EACH ROW EXECUTE FUNCTION calls_b_outbox();

-- (c) monk
CREATE FUNCTION calls_c_monk() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM monk_send('api_call', NEW.customer, jsonb_build_object('tokens', NEW.tokens));
    RETURN NEW;
END
$$;
CREATE TRIGGER calls_c_monk AFTER INSERT ON calls_c FOR EACH ROW EXECUTE FUNCTION calls_c_monk();
SQL

# Both outboxes hold the same JSON (apart from the time): show one of each.
sql -c "INSERT INTO calls_b (customer, tokens) VALUES ('cus_1', 42)" \
	-c "INSERT INTO calls_c (customer, tokens) VALUES ('cus_1', 42)" >/dev/null
note "(b) plain_outbox.event: $(sql -c "SELECT event FROM plain_outbox")"
note "(c) monk.outbox.event:  $(sql -c "SELECT event FROM monk.outbox")"

for v in a b c; do
	cat >"$BENCH_TMP/insert_$v.sql" <<EOF
\set t random(1, 100000)
INSERT INTO calls_$v (customer, tokens) VALUES ('cus_' || (:t % 1000), :t);
EOF
done

# One pgbench run of variant $1 with synchronous_commit = $2; prints its TPS.
run()
{
	local v=$1 sc=$2 out
	case $v in
	a) sql -c "TRUNCATE calls_a" ;;
	b) sql -c "TRUNCATE calls_b, plain_outbox" ;;
	c) sql -c "TRUNCATE calls_c, monk.log" ;;
	esac
	sql -c "CHECKPOINT"
	out=$(PGOPTIONS="-c synchronous_commit=$sc" "${as_user[@]}" env PGOPTIONS="-c synchronous_commit=$sc" \
		"$PGBIN/pgbench" -n -c 2 -j 2 -T "$SECS" -f "$BENCH_TMP/insert_$v.sql" \
		-h "$BENCH_TMP" -p "$PGPORT_BENCH" -U postgres postgres 2>&1) ||
		{ echo "$out" >&2; die "pgbench failed"; }
	echo "$out" | awk '/^tps = / { printf "%.0f\n", $3; exit }'
}

declare -A TPS BEST
for sc in off on; do
	for round in 1 2; do
		for v in a b c; do
			TPS[$sc,$v,$round]=$(run "$v" "$sc")
			note "synchronous_commit=$sc round $round ($v): ${TPS[$sc,$v,$round]} TPS"
		done
	done
	for v in a b c; do
		BEST[$sc,$v]=$(( TPS[$sc,$v,1] > TPS[$sc,$v,2] ? TPS[$sc,$v,1] : TPS[$sc,$v,2] ))
	done
done

echo
echo "trigger cost: pgbench -n -c 2 -j 2 -T $SECS, single-row INSERT transactions, best of 2 runs (TPS)"
printf '%-44s %12s %12s\n' "" "sync=off" "sync=on"
printf '%-44s %12s %12s\n' "(a) no trigger" "${BEST[off,a]}" "${BEST[on,a]}"
printf '%-44s %12s %12s\n' "(b) PL/pgSQL trigger -> plain logged outbox" "${BEST[off,b]}" "${BEST[on,b]}"
printf '%-44s %12s %12s\n' "(c) PL/pgSQL trigger -> monk_send" "${BEST[off,c]}" "${BEST[on,c]}"
printf '%-44s %12s %12s\n' "(c)/(a)   target >= 0.67" "$(div "${BEST[off,c]}" "${BEST[off,a]}")" "$(div "${BEST[on,c]}" "${BEST[on,a]}")"
printf '%-44s %12s %12s\n' "(c)/(b)   target >= 0.95" "$(div "${BEST[off,c]}" "${BEST[off,b]}")" "$(div "${BEST[on,c]}" "${BEST[on,b]}")"
echo "(the targets are for synchronous_commit = off; with on, every variant waits for its WAL flush)"
