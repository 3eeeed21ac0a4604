#!/usr/bin/env bash
# trigger.sh -- what a trigger queueing events costs: monk_send from PL/pgSQL, monk_capture
# (SPEC §9, issues 5 and 13).
#
# Part 1: pgbench, single-row INSERT transactions (INSERT INTO calls_X (customer, tokens) VALUES (...)),
# 2 clients, 2 threads, 15 s per run, into four identical tables:
#   (a) calls_a: no trigger;
#   (b) calls_b: a hand-written PL/pgSQL AFTER INSERT trigger inserting the same event into a plain
#       logged table plain_outbox (id bigserial PK, key text, event text, queued_at timestamptz
#       default now()) -- the cheapest transactional outbox -- the JSON rendered with
#       jsonb_build_object(...)::text, key 'sync_' || id as monk assigns it;
#   (c) calls_c: a PL/pgSQL AFTER INSERT trigger doing
#       PERFORM monk_send('api_call', NEW.customer, jsonb_build_object('tokens', NEW.tokens));
#   (d) calls_d: monk_capture('api_call', 'external_customer_id=customer', 'properties=tokens'),
#       a row-level AFTER INSERT trigger, no PL/pgSQL.
# With synchronous_commit = off (CPU cost: no wait for the WAL flush) and with the default (on).
# Each variant runs twice, interleaved (a b c d a b c d), each run on emptied tables after a
# CHECKPOINT; the better TPS of the two counts.  The worker is pointed at a closed port, so it sends
# nothing during the runs and the events just accumulate.
# Targets (SPEC §9): (c)/(a) >= 0.67, (c)/(b) >= 0.95, (d)/(b) >= 1.10 (issue 13).
#
# Part 2 (issue 13): one INSERT ... SELECT of 100,000 rows (synchronous_commit = off), median of
# 3 runs each, into a table with (e) a PL/pgSQL row trigger calling monk_send, (f) a statement-level
# monk_capture trigger reading the transition table, (g) no trigger.  Target: (f)/(e) <= 0.5.
#
# Run:   bash test/bench/trigger.sh                 (as root, or as a user who can run PostgreSQL; PG_CONFIG picks which)
#        BENCH_SMALL=1 bash test/bench/trigger.sh   (3 s per run: a quick smoke run)
#        BENCH_SECONDS=30 ...                       (another duration per run)
#        TRIGGER_PARTS=bulk ...                     (only part 2; =row: only part 1)
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
CREATE TABLE calls_d (id bigserial PRIMARY KEY, customer text NOT NULL, tokens int NOT NULL,
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

-- (d) monk_capture
CREATE TRIGGER calls_d_monk AFTER INSERT ON calls_d FOR EACH ROW
    EXECUTE FUNCTION monk_capture('api_call', 'external_customer_id=customer', 'properties=tokens');

-- part 2
CREATE TABLE bulk_e (id bigint PRIMARY KEY, customer text NOT NULL, tokens int NOT NULL);
CREATE TABLE bulk_f (LIKE bulk_e INCLUDING ALL);
CREATE TABLE bulk_g (LIKE bulk_e INCLUDING ALL);
-- (e) is (c)'s trigger function: the same columns
CREATE TRIGGER bulk_e_monk AFTER INSERT ON bulk_e FOR EACH ROW EXECUTE FUNCTION calls_c_monk();
CREATE TRIGGER bulk_f_monk AFTER INSERT ON bulk_f REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION monk_capture('api_call', 'external_customer_id=customer', 'properties=tokens');
SQL

# Both outboxes hold the same JSON (apart from the time): show one of each.
sql -c "INSERT INTO calls_b (customer, tokens) VALUES ('cus_1', 42)" \
	-c "INSERT INTO calls_c (customer, tokens) VALUES ('cus_1', 42)" \
	-c "INSERT INTO calls_d (customer, tokens) VALUES ('cus_1', 42)" >/dev/null
note "(b) plain_outbox.event: $(sql -c "SELECT event FROM plain_outbox")"
note "(c) monk.outbox.event:  $(sql -c "SELECT event FROM monk.outbox WHERE idempotency_key LIKE '%outbox%'")"
note "(d) monk.outbox.event:  $(sql -c "SELECT event FROM monk.outbox WHERE idempotency_key LIKE '%calls_d%'")"

for v in a b c d; do
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
	d) sql -c "TRUNCATE calls_d, monk.log" ;;
	esac
	sql -c "CHECKPOINT"
	out=$(PGOPTIONS="-c synchronous_commit=$sc" "${as_user[@]}" env PGOPTIONS="-c synchronous_commit=$sc" \
		"$PGBIN/pgbench" -n -c 2 -j 2 -T "$SECS" -f "$BENCH_TMP/insert_$v.sql" \
		-h "$BENCH_TMP" -p "$PGPORT_BENCH" -U postgres postgres 2>&1) ||
		{ echo "$out" >&2; die "pgbench failed"; }
	echo "$out" | awk '/^tps = / { printf "%.0f\n", $3; exit }'
}

PARTS=${TRIGGER_PARTS:-row,bulk}
declare -A TPS BEST
[[ $PARTS == *row* ]] || note "part 1 skipped (TRIGGER_PARTS=$PARTS)"
for sc in off on; do
	[[ $PARTS == *row* ]] || break
	for round in 1 2; do
		for v in a b c d; do
			TPS[$sc,$v,$round]=$(run "$v" "$sc")
			note "synchronous_commit=$sc round $round ($v): ${TPS[$sc,$v,$round]} TPS"
		done
	done
	for v in a b c d; do
		BEST[$sc,$v]=$(( TPS[$sc,$v,1] > TPS[$sc,$v,2] ? TPS[$sc,$v,1] : TPS[$sc,$v,2] ))
	done
done

if [[ $PARTS == *row* ]]; then
echo
echo "trigger cost: pgbench -n -c 2 -j 2 -T $SECS, single-row INSERT transactions, best of 2 runs (TPS)"
printf '%-44s %12s %12s\n' "" "sync=off" "sync=on"
printf '%-44s %12s %12s\n' "(a) no trigger" "${BEST[off,a]}" "${BEST[on,a]}"
printf '%-44s %12s %12s\n' "(b) PL/pgSQL trigger -> plain logged outbox" "${BEST[off,b]}" "${BEST[on,b]}"
printf '%-44s %12s %12s\n' "(c) PL/pgSQL trigger -> monk_send" "${BEST[off,c]}" "${BEST[on,c]}"
printf '%-44s %12s %12s\n' "(d) monk_capture row trigger" "${BEST[off,d]}" "${BEST[on,d]}"
printf '%-44s %12s %12s\n' "(c)/(a)   target >= 0.67" "$(div "${BEST[off,c]}" "${BEST[off,a]}")" "$(div "${BEST[on,c]}" "${BEST[on,a]}")"
printf '%-44s %12s %12s\n' "(c)/(b)   target >= 0.95" "$(div "${BEST[off,c]}" "${BEST[off,b]}")" "$(div "${BEST[on,c]}" "${BEST[on,b]}")"
printf '%-44s %12s %12s\n' "(d)/(b)   target >= 1.10" "$(div "${BEST[off,d]}" "${BEST[off,b]}")" "$(div "${BEST[on,d]}" "${BEST[on,b]}")"
printf '%-44s %12s %12s\n' "(d)/(c)" "$(div "${BEST[off,d]}" "${BEST[off,c]}")" "$(div "${BEST[on,d]}" "${BEST[on,c]}")"
echo "(the targets are for synchronous_commit = off; with on, every variant waits for its WAL flush)"
fi
[[ $PARTS == *bulk* ]] || exit 0

# Part 2: one INSERT ... SELECT of $ROWS rows; prints its seconds.
ROWS=$(scaled 100000)
bulk()
{
	local v=$1
	sql -c "TRUNCATE bulk_$v, monk.log" -c "CHECKPOINT" >/dev/null
	sql -c "SET synchronous_commit = off" -c "\\timing on" \
		-c "INSERT INTO bulk_$v SELECT i, 'cus_' || (i % 1000), i FROM generate_series(1, $ROWS) i" |
		awk '/^Time: / { printf "%.3f\n", $2 / 1000; exit }'
}
declare -A SECS_BULK
for v in e f g; do SECS_BULK[$v]=""; done
for round in 1 2 3; do
	for v in e f g; do
		t=$(bulk "$v")
		note "bulk round $round ($v): $t s"
		SECS_BULK[$v]="${SECS_BULK[$v]} $t"
	done
done
# shellcheck disable=SC2086
E=$(median ${SECS_BULK[e]}); F=$(median ${SECS_BULK[f]}); G=$(median ${SECS_BULK[g]})
echo
echo "bulk: INSERT INTO ... SELECT of $ROWS rows, synchronous_commit = off, median of 3 (seconds)"
printf '%-52s %10s\n' "(e) PL/pgSQL row trigger -> monk_send" "$E"
printf '%-52s %10s\n' "(f) monk_capture statement trigger (transition table)" "$F"
printf '%-52s %10s\n' "(g) no trigger" "$G"
printf '%-52s %10s\n' "(f)/(e)   target <= 0.50" "$(div "$F" "$E")"
printf '%-52s %10s\n' "events queued per second by (f), beyond (g)" "$(rate "$ROWS" "$(awk -v f="$F" -v g="$G" 'BEGIN { print f - g }')")"
