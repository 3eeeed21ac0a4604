# monk_batch_export against the local API: a first full export of 100,000
# rows with invalid rows and unknown customers, an incremental run, a re-run
# that sends nothing, the API failing for good mid-export, cancellation, a
# refused key, two exports of one cursor at once, and pg_cron scheduling.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

# Debian packages no pg_cron for every major (none yet for 19): its part is then skipped
my $has_cron = has_library('pg_cron');
my $api = MonkApi->new(api_key => 'test_key', customers => [ map { "cus_$_" } 0 .. 9 ]);
my $node = monk_node(api => $api,
	conf => {
		$has_cron ? (
			'shared_preload_libraries'    => 'monk,pg_cron',
			'cron.database_name'          => 'postgres',
			'cron.use_background_workers' => 'on') : (),
		'max_worker_processes'       => '16',
		'monk.max_parallel_requests' => 4,
		'monk.idempotency_prefix'    => 'sync_',
	});

# the bulk guide's billing_events, exported through a view that renames columns
$node->safe_psql('postgres', q{
CREATE TABLE billing_events (
    id bigserial PRIMARY KEY,
    external_customer_id text,
    event_type text,
    occurred_at timestamptz NOT NULL DEFAULT '2026-03-15 10:30:00+00',
    region text,
    model text);
CREATE VIEW billing_export AS
    SELECT id, external_customer_id, event_type AS event_name, occurred_at AS "timestamp",
           jsonb_build_object('region', region, 'model', model) AS properties
      FROM billing_events;
INSERT INTO billing_events (external_customer_id, event_type, region, model)
    SELECT 'cus_' || (i % 10), 'api_call', 'eu', 'gpt-4' FROM generate_series(1, 100000) i;
-- a few invalid rows and a few unknown customers
UPDATE billing_events SET event_type = '' WHERE id IN (17, 50017);
UPDATE billing_events SET external_customer_id = NULL WHERE id = 99999;
UPDATE billing_events SET occurred_at = now() + interval '1 day' WHERE id = 12345;
UPDATE billing_events SET external_customer_id = 'cus_unknown' WHERE id IN (3, 40004, 77777);
});
my %bad = map { $_ => 1 } (17, 50017, 99999, 12345, 3, 40004, 77777);

sub export_row
{
	my ($args) = @_;
	return $node->safe_psql('postgres',
		"SELECT batches, events_sent, events_failed, last_id FROM monk_batch_export($args)");
}

# first full export
is(export_row(q{'billing_export', 5000}), '20|99993|7|100000',
	'a first export of 100,000 rows: every valid row sent, 7 dead-lettered, cursor at the last id');
api_holds_exactly($api, [ map { "sync_$_" } grep { !$bad{$_} } 1 .. 100000 ],
	'the API holds every valid row exactly once, by sync_<id>');
is($node->safe_psql('postgres', q{SELECT string_agg(source_id::text, ',' ORDER BY source_id) FROM monk.dead_letter}),
	'3,17,12345,40004,50017,77777,99999', 'exactly the bad rows are dead-lettered');
is($node->safe_psql('postgres', q{SELECT http_status, error FROM monk.dead_letter WHERE source_id = 17}),
	'|invalid event: event_name must not be empty', 'an invalid row: its reason, no HTTP status');
like($node->safe_psql('postgres', q{SELECT error FROM monk.dead_letter WHERE source_id = 99999}),
	qr/an event needs customer_id or external_customer_id/, 'a row without a customer');
like($node->safe_psql('postgres', q{SELECT error FROM monk.dead_letter WHERE source_id = 12345}),
	qr/timestamp must not be more than 1 hour in the future/, 'a row from the future');
is($node->safe_psql('postgres', q{SELECT http_status, response_body LIKE '%cus_unknown%', source FROM monk.dead_letter WHERE source_id = 40004}),
	'400|t|public.billing_export', 'an unknown customer: refused by the API, isolated by bisection, with its answer');
is($node->safe_psql('postgres', q{SELECT last_id, events_sent, events_failed FROM monk.sync_state WHERE cursor_name = 'public.billing_export'}),
	'100000|99993|7', 'the cursor is stored');
my $ev = $api->events->{sync_2}{event};
is_deeply($ev, { eventName => 'api_call', externalCustomerId => 'cus_2', idempotencyKey => 'sync_2',
		timestamp => '2026-03-15T10:30:00Z', properties => { region => 'eu', model => 'gpt-4' } },
	'an exported event has the guide\'s shape');

# the outbox's default keys never collide with the export's: outbox event 2 is not sync_2
$node->safe_psql('postgres', q{ALTER SEQUENCE monk.outbox_id_seq RESTART WITH 2});
is($node->safe_psql('postgres', q{SELECT monk_send('api_call', 'cus_3')}), 'sync_outbox_2',
	"an event queued with a default key gets the outbox's own key");
ok(wait_outbox_empty($node), 'and is sent');
is($api->events->{sync_2}{event}{externalCustomerId}, 'cus_2', 'the exported row 2 is still counted as itself');
is($api->events->{sync_outbox_2}{event}{externalCustomerId}, 'cus_3', 'beside outbox event 2');

# a re-run sends nothing
my $requests = $api->stats->{requests};
is(export_row(q{'billing_export'}), '0|0|0|100000', 'a re-run sends nothing');
is($api->stats->{requests}, $requests, 'not a single request');

# new rows are sent alone on the next run
$node->safe_psql('postgres', q{INSERT INTO billing_events (external_customer_id, event_type) SELECT 'cus_1', 'late' FROM generate_series(1, 10)});
$api->reset(customers => [ map { "cus_$_" } 0 .. 9 ]);
is(export_row(q{'billing_export'}), '1|10|0|100010', 'an incremental run sends the new rows');
api_holds_exactly($api, [ map { "sync_$_" } 100001 .. 100010 ], 'only the new rows');

# max_events bounds a run; a row's own idempotency_key is used
$node->safe_psql('postgres', q{
CREATE TABLE usage_rows (id int PRIMARY KEY, customer_id uuid, event_name varchar, idempotency_key text, properties json);
INSERT INTO usage_rows SELECT i, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'tokens', 'usage-' || i, '{"n": 1}' FROM generate_series(1, 30) i;
});
$api->reset;
$api->faults({ customers => undef });
is(export_row(q{'usage_rows', 10, 25, 'usage-cursor'}), '3|25|0|25', 'max_events stops after 25 rows, in batches of 10');
is(export_row(q{'usage_rows', 10, NULL, 'usage-cursor'}), '1|5|0|30', 'the next run takes the rest');
api_holds_exactly($api, [ map { "usage-$_" } 1 .. 30 ], 'with the rows\' own keys');
is($api->events->{'usage-1'}{event}{customerId}, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'customer_id is sent as customerId');

# the API failing for good mid-export: the cursor stops before the failed batch
$node->safe_psql('postgres', q{
CREATE TABLE outage (id bigint PRIMARY KEY, external_customer_id text, event_name text);
INSERT INTO outage SELECT i, 'cus_1', 'e' FROM generate_series(1, 1000) i;
});
set_monk_conf($node, 'monk.max_retries' => 2, 'monk.max_parallel_requests' => 1);
$api->reset;
$api->faults({ script => [ 'ok', 'ok', 'ok' ], fail_rate => { 503 => 1.0 }, retry_after => 0 });
my ($rc, $out, $err) = $node->psql('postgres', q{SELECT batches, events_sent, events_failed, last_id FROM monk_batch_export('outage', 100)});
is($out, '4|300|0|300', 'the export stops at the failing batch; the cursor stays before it');
like($err, qr/WARNING:  monk_batch_export: a batch of 100 events failed 3 times; the export stops before it/,
	'a WARNING says so');
is($node->safe_psql('postgres', q{SELECT last_id, last_error FROM monk.sync_state WHERE cursor_name = 'public.outage'}),
	'300|a batch failed after its retries', 'the stored cursor stays before the failed batch');
$api->clear_faults;
is(export_row(q{'outage', 100}), '7|700|0|1000', 'the next run completes from there');
api_holds_exactly($api, [ map { "sync_$_" } 1 .. 1000 ], 'each key once');
set_monk_conf($node, 'monk.max_retries' => 10, 'monk.max_parallel_requests' => 4);

# cancellation mid-export: an error, nothing recorded, the next run completes
$node->safe_psql('postgres', q{
CREATE TABLE slow (id bigint PRIMARY KEY, external_customer_id text, event_name text);
INSERT INTO slow SELECT i, 'cus_1', 'e' FROM generate_series(1, 500) i;
});
$api->reset;
$api->faults({ delay_ms => 2000 });
my $session = $node->background_psql('postgres', on_error_stop => 0);
$session->query_until(qr/started/, q{\echo started
SELECT * FROM monk_batch_export('slow', 100);
});
ok(wait_until('requests in flight', 30, sub { $api->stats->{inflight} > 0 }), 'the export is waiting on the API');
$node->safe_psql('postgres', q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%monk_batch_export(''slow''%' AND pid <> pg_backend_pid()});
ok(wait_until('the cancel', 10, sub {
		$session->{run}->pump_nb;
		$session->{stderr} =~ /canceling statement due to user request/ }),
	'cancellation is honoured while waiting on the network');
$session->quit;
is($node->safe_psql('postgres', q{SELECT coalesce(max(last_id), 0) FROM monk.sync_state WHERE cursor_name = 'public.slow'}),
	'0', 'the cancelled run recorded no progress');
$api->faults({ delay_ms => 0 });
is(export_row(q{'slow', 100}), '5|500|0|500', 'the next run completes');
api_holds_exactly($api, [ map { "sync_$_" } 1 .. 500 ], 'each key counted once');

# statement_timeout too
$node->safe_psql('postgres', q{INSERT INTO slow SELECT i, 'cus_1', 'e' FROM generate_series(501, 600) i});
$api->faults({ delay_ms => 3000 });
($rc, $out, $err) = $node->psql('postgres', q{SET statement_timeout = '500ms'; SELECT * FROM monk_batch_export('slow')});
like($err, qr/canceling statement due to statement timeout/, 'statement_timeout is honoured while waiting on the network');
$api->faults({ delay_ms => 0 });

# a refused key stops the export with a clear error; nothing is dead-lettered
$node->append_conf('postgresql.conf', "monk.api_key = 'bad_key'");
$node->reload;
ok(wait_until('the reload', 10, sub { $node->safe_psql('postgres', 'SHOW monk.api_key') eq '********' && 1 }), 'reloaded');
my $dead = $node->safe_psql('postgres', 'SELECT count(*) FROM monk.dead_letter');
($rc, $out, $err) = $node->psql('postgres', q{SELECT * FROM monk_batch_export('slow')}, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:  28000: the Events API refused the API key \(HTTP 401\)/, 'a 401 stops the export with 28000');
is($node->safe_psql('postgres', 'SELECT count(*) FROM monk.dead_letter'), $dead, 'nothing was dead-lettered');
$node->append_conf('postgresql.conf', "monk.api_key = 'test_key'");
$node->reload;
ok(wait_until('the export to work again', 10, sub {
		my ($r, $o) = $node->psql('postgres', q{SELECT events_sent FROM monk_batch_export('slow')});
		$r == 0 && $o eq '100' }), 'with the key fixed, the next run sends the rest');

# two exports of one cursor at once: the second fails fast
$node->safe_psql('postgres', q{INSERT INTO slow SELECT i, 'cus_1', 'e' FROM generate_series(601, 700) i});
$api->faults({ delay_ms => 2000 });
my $first = $node->background_psql('postgres');
$first->query_until(qr/started/, q{\echo started
SELECT * FROM monk_batch_export('slow');
});
ok(wait_until('the first export to be sending', 30, sub { $api->stats->{inflight} > 0 }), 'a first export is running');
($rc, $out, $err) = $node->psql('postgres', q{SELECT * FROM monk_batch_export('slow')}, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:  55P03: another monk_batch_export of cursor "public.slow" is running/, 'a second export of the cursor fails fast with 55P03');
$api->faults({ delay_ms => 0 });
$first->quit;
is($node->safe_psql('postgres', q{SELECT last_id FROM monk.sync_state WHERE cursor_name = 'public.slow'}), '700', 'the first export finished');

# pg_cron runs the export on its schedule and advances the cursor
SKIP:
{
	my $major = $node->safe_psql('postgres', q{SELECT current_setting('server_version_num')::int / 10000});
	unless ($has_cron)
	{
		diag("pg_cron part skipped: pg_cron is not installed (Debian packages no postgresql-$major-cron)");
		skip("pg_cron is not installed: Debian packages no postgresql-$major-cron", 2);
	}
	$node->safe_psql('postgres', q{
CREATE EXTENSION pg_cron;
INSERT INTO billing_events (external_customer_id, event_type) SELECT 'cus_2', 'cron' FROM generate_series(1, 20);
});
	# every 2 seconds where pg_cron has seconds (1.5 and later), else every minute
	my ($rc) = $node->psql('postgres', q{SELECT cron.schedule('monk-sync', '2 seconds', $$SELECT * FROM monk_batch_export('billing_export')$$)});
	$node->safe_psql('postgres', q{SELECT cron.schedule('monk-sync', '* * * * *', $$SELECT * FROM monk_batch_export('billing_export')$$)})
	  if $rc != 0;
	ok(wait_until('pg_cron to run the export', 90, sub {
			$node->safe_psql('postgres', q{SELECT last_id FROM monk.sync_state WHERE cursor_name = 'public.billing_export'}) eq '100030' }),
		'pg_cron ran the scheduled export and the cursor advanced');
	is($node->safe_psql('postgres', q{SELECT bool_or(status = 'succeeded'), bool_and(status <> 'failed') FROM cron.job_run_details}),
		't|t', 'the job succeeded');
}

$node->stop;
$api->stop;
done_testing();
