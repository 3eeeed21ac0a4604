# The worker delivers committed events: woken at commit, batched by size and
# by interval, several requests in flight, visible in pg_stat_activity and
# monk.status, one worker per database.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key');
my $node = monk_node(api => $api, databases => [ 'postgres', 'billing' ],
	conf => { 'monk.batch_size' => 100, 'monk.flush_interval' => '200ms' });

# the worker is visible
ok( wait_until('the workers to start', 30, sub {
		$node->safe_psql('postgres',
			q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'monk worker'}) == 2 }),
	'one worker per database runs');
is($node->safe_psql('postgres',
	q{SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_activity WHERE backend_type = 'monk worker'}),
	'monk worker: billing,monk worker: postgres', 'its application name names the database');
is($node->safe_psql('postgres', q{SELECT worker_running, worker_state FROM monk.status}),
	't|idle', 'monk.status shows it running and idle');

# committed events arrive, a rolled-back one never does; the trigger path too
billed_table($node, 'api_calls', 'api_call', 'call_');
$node->safe_psql('postgres', q{INSERT INTO api_calls (customer, tokens) SELECT 'cus_' || i, i FROM generate_series(1, 3) i});
$node->safe_psql('postgres', q{BEGIN; INSERT INTO api_calls (customer, tokens) VALUES ('cus_x', 99); ROLLBACK;});
$node->safe_psql('postgres', q{BEGIN; SELECT monk_send('api_call', 'cus_y', idempotency_key => 'never'); ROLLBACK;});
ok(wait_outbox_empty($node), 'the outbox drains');
api_holds_exactly($api, [qw(call_1 call_2 call_3)], 'the API holds the committed events only');
my $ev = $api->events->{call_2}{event};
is_deeply($ev, { eventName => 'api_call', externalCustomerId => 'cus_2', idempotencyKey => 'call_2',
		properties => { tokens => 2 }, timestamp => $ev->{timestamp} },
	'the event arrives as rendered');
my ($req) = grep { $_->{path} eq '/v1/events/batch' } @{ $api->requests(10) };
is($req->{user_agent}, 'monk-postgres/' . $node->safe_psql('postgres', q{SELECT extversion FROM pg_extension WHERE extname = 'monk'}),
	'User-Agent names monk and its version');

# batching by size: 250 events in one transaction -> batches of at most 100
$api->reset;
$node->safe_psql('postgres', q{SELECT monk_send('bulk', 'cus_1', idempotency_key => 'bulk_' || i) FROM generate_series(1, 250) i});
ok(wait_outbox_empty($node), 'a larger transaction drains');
is(scalar @{ $api->keys }, 250, 'all 250 events arrived');
is($api->stats->{max_batch}, 100, 'no request carried more than monk.batch_size events');
is($api->stats->{batches}, 3, 'they went in 3 requests');

# batching by interval: fewer events than a batch still leave after flush_interval
$api->reset;
$node->safe_psql('postgres', q{SELECT monk_send('small', 'cus_1', idempotency_key => 'small_' || i) FROM generate_series(1, 7) i});
ok(wait_outbox_empty($node), 'a partial batch is sent after monk.flush_interval');
is($api->stats->{batches}, 1, 'as one request');

# wake on commit: with a long flush interval and batch size 1, an event leaves
# at once because its commit wakes the worker
set_monk_conf($node, 'monk.batch_size' => 1, 'monk.flush_interval' => '1h');
$api->reset;
ok(wait_until('the reload', 10, sub { $node->safe_psql('postgres', 'SHOW monk.flush_interval') eq '1h' }), 'reloaded');
$node->safe_psql('postgres', q{SELECT monk_send('woken', 'cus_1', idempotency_key => 'woken')});
ok(wait_outbox_empty($node, 'postgres', 10), 'a commit wakes the worker');
api_holds_exactly($api, ['woken'], 'the event arrived');

# parallel requests: a slow API sees several requests at once
set_monk_conf($node, 'monk.batch_size' => 50, 'monk.flush_interval' => '50ms', 'monk.max_parallel_requests' => 4);
$api->reset;
$api->faults({ delay_ms => 300 });
$node->safe_psql('postgres', q{SELECT monk_send('par', 'cus_1', idempotency_key => 'par_' || i) FROM generate_series(1, 1000) i});
ok(wait_outbox_empty($node, 'postgres', 60), 'the outbox drains through a slow API');
cmp_ok($api->stats->{max_concurrent}, '>=', 3, 'several requests were in flight at once');
cmp_ok($api->stats->{max_concurrent}, '<=', 4, 'never more than monk.max_parallel_requests');
is(scalar @{ $api->keys }, 1000, 'all events arrived');
my %conns = map { $_->{conn} => 1 } @{ $api->requests(100) };
cmp_ok(scalar(keys %conns), '<=', 8, 'connections are reused');
$api->clear_faults;

# the second database has its own worker and outbox
$api->reset;
$node->safe_psql('billing', q{SET monk.idempotency_prefix = 'billing_'; SELECT monk_send('b', 'cus_1') FROM generate_series(1, 5)});
ok(wait_outbox_empty($node, 'billing'), 'the second database drains');
is(join(',', sort @{ $api->keys }), 'billing_outbox_1,billing_outbox_2,billing_outbox_3,billing_outbox_4,billing_outbox_5',
	'its events arrived');

# monk.status counts what was done
my $status = $node->safe_psql('postgres', q{SELECT events_sent > 0, requests_2xx > 0, last_success_at IS NOT NULL, outbox_depth, circuit FROM monk.status});
is($status, 't|t|t|0|closed', 'monk.status reports the deliveries');

$node->stop;
$api->stop;
done_testing();
