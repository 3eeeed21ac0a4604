# The promise under stress: 50,000+ events written by concurrent
# transactions (some rolled back) while the API answers 20% 5xx, 10% 429 and
# drops 5% of connections, with the postmaster killed mid-export and
# restarted.  The API ends holding exactly the committed events -- none
# missing, none extra -- and the outbox is empty.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key');
my $node = monk_node(api => $api,
	conf => {
		'monk.batch_size'            => 500,
		'monk.flush_interval'        => '50ms',
		'monk.max_parallel_requests' => 4,
		'monk.circuit_failure_threshold' => 20,
		'monk.circuit_open_time'     => '200ms',
		'restart_after_crash'        => 'on',
	});
billed_table($node, 'ledger', 'usage', 'soak_');

$api->faults({ fail_rate => { 500 => 0.1, 502 => 0.05, 503 => 0.05, 429 => 0.1 },
	drop_rate => 0.05, retry_after => 0, seed => 42, delay_ms => 300 });

# 4 clients x 550 transactions x 25 rows; one transaction in ten rolls back
my $script = $node->basedir . '/soak.sql';
open my $fh, '>', $script or die $!;
print $fh <<'SQL';
\set r random(1, 10)
BEGIN;
INSERT INTO ledger (customer, tokens) SELECT 'cus_' || :client_id, g FROM generate_series(1, 25) g;
\if :r = 1
ROLLBACK;
\else
COMMIT;
\endif
SQL
close $fh;
$node->command_ok([ 'pgbench', '-n', '-c', '4', '-j', '2', '-t', '550', '-f', $script,
		'-h', $node->host, '-p', $node->port, 'postgres' ], 'concurrent writers commit and roll back');

my $committed = $node->safe_psql('postgres', 'SELECT count(*) FROM ledger');
cmp_ok($committed, '>=', 45000, "about 50,000 events were committed ($committed)");
cmp_ok($committed, '<', 55000, 'and some transactions rolled back');

# kill the postmaster mid-export, then start again
ok(wait_until('the export to be under way', 60, sub { scalar(@{ $api->keys }) > 5000 }), 'the export is under way');
cmp_ok(outbox_count($node), '>', 0, 'events are still queued');
$node->kill9;
# the old children exit when they see the postmaster gone; until then a new
# postmaster refuses to start (its failed attempt leaves _pid set: clear it)
ok(wait_until('the old server processes to exit', 60, sub {
		$node->{_pid} = undef;
		$node->start(fail_ok => 1) }), 'the server starts again after kill -9 of the postmaster');

ok(wait_outbox_empty($node, 'postgres', 300), 'the outbox drains through the faults');
my $keys = committed_keys($node, 'postgres', q{SELECT 'soak_' || id FROM ledger});
api_holds_exactly($api, $keys, 'the API holds exactly the committed events');
is($node->safe_psql('postgres', 'SELECT count(*) FROM monk.dead_letter'), '0', 'nothing was dead-lettered');
my $stats = $api->stats;
cmp_ok($stats->{by_status}{500} // 0, '>', 0, 'the API did answer 5xx');
cmp_ok($stats->{by_status}{429} // 0, '>', 0, 'and 429');
note("requests: $stats->{requests}, events received: $stats->{events_received}, stored: $stats->{events_stored}");

$node->stop;
$api->stop;
done_testing();
