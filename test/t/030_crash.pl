# Crashes and shutdowns mid-export: kill -9 of the worker, an immediate stop,
# a fast shutdown with requests in flight, and a standby promoted.  Each time
# the API ends holding exactly the committed events, by idempotency key.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key');
my $node = monk_node(api => $api, init => { allows_streaming => 1 },
	conf => {
		'monk.batch_size'            => 100,
		'monk.flush_interval'        => '10ms',
		'monk.max_parallel_requests' => 2,
		'restart_after_crash'        => 'on',
	});
my @all;

sub send_events { push @all, queue_events($node, @_) }

sub worker_pid
{
	my $pid = $node->safe_psql('postgres', 'SELECT worker_pid FROM monk.status');
	return $pid eq '' ? undef : $pid;
}

# kill -9 of the worker while requests are in flight
$api->faults({ delay_ms => 300 });
send_events('kill', 2000);
ok(wait_until('a first delivery', 30, sub { $api->stats->{batches} >= 2 }), 'the export is under way');
my $pid = worker_pid();
ok($pid, 'the worker runs');
kill 'KILL', $pid;
ok(wait_until('the server to restart', 60, sub {
		my ($rc) = $node->psql('postgres', 'SELECT 1');
		return $rc == 0 && defined worker_pid() && worker_pid() != $pid }),
	'after kill -9 the server restarts the worker');
cmp_ok(outbox_count($node), '>', 0, 'events were left to send');
$api->faults({ delay_ms => 0 });
ok(wait_outbox_empty($node), 'the restarted worker drains the outbox');
api_holds_exactly($api, \@all, 'the API holds exactly the committed events');

# an immediate stop mid-export
$api->faults({ delay_ms => 300 });
send_events('immediate', 2000);
ok(wait_until('a delivery', 30, sub { scalar(grep { /^immediate_/ } @{ $api->keys }) > 0 }), 'the export is under way');
$node->stop('immediate');
$node->start;
$api->faults({ delay_ms => 0 });
ok(wait_outbox_empty($node), 'after an immediate stop and a start the outbox drains');
api_holds_exactly($api, \@all, 'exactly the committed events');

# a fast shutdown waits for the requests in flight (monk.shutdown_timeout)
$api->faults({ delay_ms => 1500 });
send_events('fast', 300);
ok(wait_until('requests in flight', 30, sub { $api->stats->{inflight} > 0 }), 'requests are in flight');
$node->stop('fast');
# nothing new is stored while the outbox is compared with what the API holds
$api->faults({ fail_rate => { 503 => 1.0 }, retry_after => 0 });
$node->start;
my %held = map { $_ => 1 } @{ $api->keys };
my @queued = sort split /\n/, $node->safe_psql('postgres', q{SELECT idempotency_key FROM monk.outbox});
my @unsent = sort grep { !$held{$_} } map { "fast_$_" } 1 .. 300;
cmp_ok(scalar(@queued), '<', 300, 'requests in flight at shutdown completed and were recorded');
is_deeply(\@queued, \@unsent, 'the outbox keeps exactly the events the API did not receive before the shutdown');
$api->clear_faults;
ok(wait_outbox_empty($node), 'the rest is sent after the restart');
api_holds_exactly($api, \@all, 'exactly the committed events');

# a fast shutdown shorter than the requests: they are abandoned, the events stay queued
set_monk_conf($node, 'monk.shutdown_timeout' => '100ms');
$api->faults({ delay_ms => 3000 });
send_events('abandoned', 200);
ok(wait_until('requests in flight', 30, sub { $api->stats->{inflight} > 0 }), 'requests are in flight');
$node->stop('fast');
$node->start;
is(outbox_count($node) > 0 ? 1 : 0, 1, 'abandoned requests leave their events queued');
$api->faults({ delay_ms => 0 });
ok(wait_outbox_empty($node), 'and they are sent after the restart');
api_holds_exactly($api, \@all, 'exactly the committed events');
set_monk_conf($node, 'monk.shutdown_timeout' => '5s');

# a standby does not export; after promotion it does
$node->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'b1', has_streaming => 1);
$standby->start;
$api->faults({ fail_rate => { 503 => 1.0 }, retry_after => 0 });
send_events('failover', 500);
$node->wait_for_catchup($standby);
is($standby->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'monk worker'}),
	'0', 'no worker runs on the standby');
is($standby->safe_psql('postgres', 'SELECT count(*) FROM monk.outbox'), '500', 'the outbox reached the standby');
my ($rc, $out, $err) = $standby->psql('postgres', q{SELECT monk_send('api_call', 'cus_1')});
like($err, qr/cannot queue an event in a read-only transaction/, 'monk_send on a standby refuses clearly');
$node->stop('immediate');
$standby->promote;
$api->clear_faults;
ok(wait_until('the worker on the promoted standby', 30, sub {
		$standby->safe_psql('postgres', q{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'monk worker'}) == 1 }),
	'after promotion the worker starts');
ok(wait_outbox_empty($standby), 'and drains the replicated outbox');
api_holds_exactly($api, \@all, 'the API holds exactly the committed events after the failover');

$standby->stop;
$api->stop;
done_testing();
