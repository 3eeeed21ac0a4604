# A seeded, randomized soak of the per-key order: four sessions write the
# rows of a captured table and explicit keys at random, each write after the
# previous one of its key committed (as a row lock serializes an
# application's writers), many of them in transactions that took their id
# long before (so transaction ids and commits come in different orders),
# with savepoints rolled back and transactions rolled back, while the worker
# is held now and then, the API fails, drops and answers slowly, and the
# server stops at once once.  At the end the API holds, for every row and
# key, exactly the value committed last.  MONK_SOAK_SEED replays a run.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use MonkApi;
use MonkTest;

my $seed = $ENV{MONK_SOAK_SEED} // int(rand(1_000_000));
srand($seed);
note("seed $seed (MONK_SOAK_SEED=$seed replays this run)");

my $api = MonkApi->new(api_key => 'test_key');
my $node = monk_node(api => $api,
	conf => {
		'monk.batch_size'            => 7,
		'monk.max_parallel_requests' => 3,
		'monk.flush_interval'        => '20ms',
		'monk.test_wait_points'      => 'read',
	});
my $kp = key_prefix($node);
$node->safe_psql('postgres', q{
CREATE TABLE t (id int PRIMARY KEY, customer text NOT NULL, tokens int NOT NULL);
CREATE TRIGGER t_capture AFTER INSERT OR UPDATE ON t
    FOR EACH ROW EXECUTE FUNCTION monk_capture('api_call', 'external_customer_id=customer', 'properties=tokens');
INSERT INTO t SELECT i, 'cus_1', 0 FROM generate_series(1, 25) i;
});
my $rows = 25;
my $keys = 15;
my %want;    # key at the API => value committed last
$want{"${kp}public.t:$_:api_call"} = 0 for 1 .. $rows;

my @sessions;
my @open;    # per session: a transaction is open (it took its id)
sub start_sessions
{
	@sessions = map { $node->background_psql('postgres', on_error_stop => 0) } 1 .. 4;
	@open = (0) x 4;
}
start_sessions();

my $value = 0;
my $hold;
my $stopped = 0;
my $deadline = time + 60;
my $ops = 0;
while (time < $deadline && $ops < 2000)
{
	$ops++;
	my $s = int(rand(4));
	my $r = rand();
	if ($r < 0.25 && !$open[$s])
	{
		# take a transaction id now, write much later
		$sessions[$s]->query_safe('BEGIN; SELECT pg_current_xact_id()');
		$open[$s] = 1;
		next;
	}
	$value++;
	my $row = 1 + int(rand($rows));
	my $key = 'k_' . (1 + int(rand($keys)));
	my $write = rand() < 0.6
	  ? ["UPDATE t SET tokens = $value WHERE id = $row", "${kp}public.t:$row:api_call"]
	  : ["SELECT monk_send('call', 'cus_1', jsonb_build_object('tokens', $value), idempotency_key => '$key')", $key];
	my ($sql, $akey) = @$write;
	my $fate = rand();
	my $body;
	if ($fate < 0.1)
	{
		$body = "$sql; ROLLBACK";    # never committed
	}
	elsif ($fate < 0.25)
	{
		# a savepoint rolled back, then the value committed
		(my $undone = $sql) =~ s/\b$value\b/-1/;
		$body = "SAVEPOINT sp; $undone; ROLLBACK TO SAVEPOINT sp; $sql; COMMIT";
		$want{$akey} = $value;
	}
	else
	{
		$body = "$sql; COMMIT";
		$want{$akey} = $value;
	}
	$body = "BEGIN; $body" unless $open[$s];
	$sessions[$s]->query_safe($body);
	$open[$s] = 0;

	# now and then: hold the worker, change the API's faults, stop the server at once
	my $e = rand();
	if ($e < 0.05)
	{
		if ($hold) { $hold->quit; undef $hold; }
		else { $hold = hold_wait_point($node, 'read'); }
	}
	elsif ($e < 0.09)
	{
		my @faults = ({ fail_rate => { 503 => 0.3 }, retry_after => 0 }, { drop_rate => 0.2 },
			{ delay_ms => 100 }, { script => [ 429, 500 ], retry_after => 0 });
		$api->clear_faults;
		$api->faults($faults[ int(rand(@faults)) ]) if rand() < 0.75;
	}
	elsif (!$stopped && $ops > 800 && $e < 0.11)
	{
		$_->quit for @sessions;
		if ($hold) { $hold->quit; undef $hold; }
		$node->stop('immediate');
		$node->start;
		start_sessions();
		$stopped = 1;
	}
}
$_->quit for @sessions;
$hold->quit if $hold;
$api->clear_faults;
note("$ops operations, last value $value, immediate stop: " . ($stopped ? 'yes' : 'no'));

ok(wait_outbox_empty($node, 'postgres', 120), 'the outbox drains');
my ($final) = api_versions($api, 'tokens');
my @wrong = grep { !defined $final->{$_} || $final->{$_} != $want{$_} } sort keys %want;
is(scalar(@wrong), 0, 'every row and key holds the value committed last (seed ' . $seed . ')')
  or diag(join("\n", map { "$_: want $want{$_}, API " . ($final->{$_} // 'nothing') } @wrong[0 .. ($#wrong < 9 ? $#wrong : 9)]));
api_holds_exactly($api, [ keys %want ], 'and nothing else');
is($node->safe_psql('postgres', q{SELECT string_agg(tokens::text, ',' ORDER BY id) FROM t}),
	join(',', map { $want{"${kp}public.t:$_:api_call"} } 1 .. $rows), 'the table agrees');

$node->stop;
$api->stop;
done_testing();
