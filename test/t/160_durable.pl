# Never bill a transaction that a crash can lose (issue 22, first part): with
# synchronous_commit = off a commit is visible before it is flushed, so the
# worker flushes the WAL up to what its snapshot sees before it sends.  Each
# transaction below is billed, then the server stops at once (no flush of
# the WAL buffers): the transaction must have survived.  The WAL writer
# sleeps 10 s, so that nothing else flushes the commit meanwhile.
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
		'synchronous_commit'     => 'off',
		'wal_writer_delay'       => '10s',
		'wal_writer_flush_after' => '0',
		'monk.flush_interval'    => '10ms',
	});

$node->safe_psql('postgres', 'SET synchronous_commit = on; CREATE TABLE t (id int)');
for my $i (1 .. 3)
{
	$node->safe_psql('postgres',
		"BEGIN; INSERT INTO t VALUES ($i); SELECT monk_send('call', 'cus_1', idempotency_key => 'durable_$i'); COMMIT");
	ok(wait_until("durable_$i at the API", 30, sub { grep { $_ eq "durable_$i" } @{ $api->keys } }),
		"transaction $i is billed");
	$node->stop('immediate');
	$node->start;
	is($node->safe_psql('postgres', "SELECT count(*) FROM t WHERE id = $i"), '1',
		"transaction $i, billed, survives a stop that flushes nothing");
}

$node->stop;
$api->stop;
done_testing();
