# Databases join and leave monk.databases on reload, without a restart
# (issue 22).  Under a steady stream of events in two databases, one of them
# is added to the list, taken off and added again: its worker starts, stops
# (its events staying queued) and starts again, the postmaster never
# restarts, and the API ends with exactly the committed events of both,
# each once.  A database listed before it has the extension starts sending
# as soon as CREATE EXTENSION commits.
use strict;
use warnings;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key');
my $node = monk_node(api => $api, conf => { 'monk.flush_interval' => '20ms' });
my $postmaster = $node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()');
$node->safe_psql('postgres', 'CREATE DATABASE app2');
$node->safe_psql('postgres', 'CREATE DATABASE app3');
my ($rc, $out, $err) = $node->psql('app2', 'CREATE EXTENSION monk');
like($err, qr/database "app2" is not in monk.databases.*\n.*\n.*HINT:.*and reload/s,
	'CREATE EXTENSION in a database not listed warns, and says to reload');

my $load = q{
CREATE PROCEDURE load(prefix text, n int) LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. n LOOP
        PERFORM monk_send('call', 'cus_1', idempotency_key => prefix || i);
        COMMIT;
        PERFORM pg_sleep(0.002);
    END LOOP;
END $$};
$node->safe_psql($_, $load) for qw(postgres app2);

# a stream of events in each database, each in a transaction of its own
my $n = 2000;
my @loads;
for my $db (qw(postgres app2))
{
	my ($o, $e) = ('', '');
	push @loads, [ IPC::Run::start([ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr($db),
				'-c', "CALL load('${db}_', $n)" ], '>', \$o, '2>', \$e), \$e, $db ];
}
sub sent_from { my $p = shift; return scalar grep { /^\Q$p\E_/ } @{ $api->keys } }
sub worker_of
{
	my $db = shift;
	return $node->safe_psql('postgres',
		qq{SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'monk worker' AND application_name = 'monk worker: $db'});
}

ok(wait_until('events of app2 queued', 60, sub { outbox_count($node, 'app2') > 100 }), 'app2 queues events');
is(sent_from('app2'), 0, 'none is sent while app2 is not listed');

set_monk_conf($node, 'monk.databases' => 'postgres,app2');
ok(wait_until('app2 sending', 60, sub { sent_from('app2') > 100 }), 'listed on reload, app2 sends');

set_monk_conf($node, 'monk.databases' => 'postgres');
ok(wait_until('the worker of app2 gone', 60, sub { worker_of('app2') == 0 }), 'taken off the list, its worker stops');
my $before = sent_from('app2');
ok(wait_until('app2 queueing on', 60, sub { outbox_count($node, 'app2') > 50 }), 'app2 goes on queueing');
is(sent_from('app2'), $before, 'and nothing of app2 is sent meanwhile');
ok(sent_from('postgres') > 0, 'the other database goes on sending');

set_monk_conf($node, 'monk.databases' => 'postgres, app2, app3');
for my $l (@loads)
{
	$l->[0]->finish;
	is(${ $l->[1] }, '', "the stream of $l->[2] committed every event");
}
ok(wait_outbox_empty($node, $_, 120), "$_ drains") for qw(postgres app2);
api_holds_exactly($api, [ map { my $db = $_; map { "${db}_$_" } 1 .. $n } qw(postgres app2) ],
	'the API holds every committed event of both databases, once');

# listed before the extension exists: sending starts at CREATE EXTENSION
is(worker_of('app3'), '1', 'app3, listed, has a worker, waiting for the extension');
$node->safe_psql('app3', q{CREATE EXTENSION monk; SELECT monk_send('call', 'cus_1', idempotency_key => 'app3_1')});
ok(wait_until('app3_1 at the API', 30, sub { sent_from('app3') == 1 }), 'CREATE EXTENSION in a listed database starts sending');

is($node->safe_psql('postgres', 'SELECT pg_postmaster_start_time()'), $postmaster, 'the server never restarted');

# a database that does not exist is tried again, and the others are not disturbed
set_monk_conf($node, 'monk.databases' => 'postgres,app2,app3,nowhere');
ok(wait_until('the worker of nowhere failing', 30, sub { $node->log_contains('database "nowhere" does not exist') }),
	'a database that does not exist: its worker fails');
$node->safe_psql('app2', q{SELECT monk_send('call', 'cus_1', idempotency_key => 'app2_after')});
ok(wait_until('app2_after at the API', 30, sub { grep { $_ eq 'app2_after' } @{ $api->keys } }),
	'and the others go on');

$node->stop;
$api->stop;
done_testing();
