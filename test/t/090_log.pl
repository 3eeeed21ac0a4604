# The outbox as an ordered log: corrections are never reverted (per-key
# order under faults), the work of a read stays flat under a held snapshot,
# late commits and prepared transactions are found once, settled segments are
# truncated (not while a reader holds them) and kept for monk.retention, and
# pg_dump keeps exactly the queued events.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key', customers => [ map { "cus_$_" } 0 .. 9 ]);
my $node = monk_node(api => $api,
	conf => {
		'monk.batch_size'            => 5,
		'monk.flush_interval'        => '10ms',
		'monk.max_parallel_requests' => 4,
		'monk.request_timeout'       => '2s',
		'max_prepared_transactions'  => 5,
	});
my @all;

sub psql { return $node->safe_psql('postgres', $_[0]) }

# Does the API hold all these keys?
sub api_has
{
	my %have = map { $_ => 1 } @{ $api->keys };
	return !grep { !$have{$_} } @_;
}

# Versions never go backwards: each key's history is non-decreasing.
sub histories_in_order
{
	my ($history, $prefix) = @_;
	my @bad;
	for my $k (grep { /^$prefix/ } sort keys %$history)
	{
		my @h = grep { defined } @{ $history->{$k} };
		for my $i (1 .. $#h)
		{
			if ($h[$i] < $h[ $i - 1 ])
			{
				push @bad, "$k: @h";
				last;
			}
		}
	}
	diag("out of order: @bad[0 .. ($#bad < 5 ? $#bad : 4)]") if @bad;
	return scalar(@bad) == 0;
}

# --- the correction of the issue: two versions in one transaction, batch size 1, first answer 503
set_monk_conf($node, 'monk.batch_size' => 1);
$api->faults({ script => [503], retry_after => 0 });
psql(q{BEGIN;
SELECT monk_send('call', 'cus_1', '{"v": 1}', idempotency_key => 'corr_1');
SELECT monk_send('call', 'cus_1', '{"v": 2}', idempotency_key => 'corr_1');
COMMIT});
push @all, 'corr_1';
ok(wait_outbox_empty($node), 'the correction is delivered');
my ($final, $history) = api_versions($api, 'v');
is($final->{corr_1}, 2, 'the API holds the newest version of the key');
ok(histories_in_order($history, 'corr_'), 'the older version, if sent at all, was sent first');

# --- many keys, five versions each in separate transactions, while batches fail,
#     time out and lose their answers
set_monk_conf($node, 'monk.batch_size' => 7);
$api->faults({
		fail_rate             => { 503 => 0.15, 429 => 0.1 },
		drop_rate             => 0.05,
		drop_after_store_rate => 0.1,
		delay_ms              => 15,
		retry_after           => 0 });
for my $v (1 .. 5)
{
	psql("SELECT monk_send('call', 'cus_' || (i % 10), jsonb_build_object('v', $v), idempotency_key => 'key_' || i)"
		  . " FROM generate_series(1, 60) i");
}
push @all, map { "key_$_" } 1 .. 60;
ok(wait_outbox_empty($node, undef, 120), 'every version settles under faults');
$api->clear_faults;
($final, $history) = api_versions($api, 'v');
is(scalar(grep { ($final->{"key_$_"} // 0) == 5 } 1 .. 60), 60, 'the API ends with the newest version of every key');
ok(histories_in_order($history, 'key_'), 'no key ever received an older version after a newer one');
is($api->stats->{batches_with_repeated_keys}, 0, 'no batch carried two versions of a key');
api_holds_exactly($api, \@all, 'each key once');

# --- refused versions: the newest accepted version stands
psql(q{SELECT monk_send('call', 'cus_unknown', '{"v": 1}', idempotency_key => 'bad_then_good')});
psql(q{SELECT monk_send('call', 'cus_1', '{"v": 2}', idempotency_key => 'bad_then_good')});
psql(q{SELECT monk_send('call', 'cus_1', '{"v": 1}', idempotency_key => 'good_then_bad')});
psql(q{SELECT monk_send('call', 'cus_unknown', '{"v": 2}', idempotency_key => 'good_then_bad')});
push @all, 'bad_then_good', 'good_then_bad';
ok(wait_outbox_empty($node), 'the refused versions are dead-lettered');
($final) = api_versions($api, 'v');
is($final->{bad_then_good}, 2, 'a version after a refused one is delivered');
is($final->{good_then_bad}, 1, 'a refused version does not replace the accepted one');

# --- a transaction that commits late, and a prepared one
set_monk_conf($node, 'monk.batch_size' => 5);
my $late = $node->background_psql('postgres');
$late->query_safe(q{BEGIN; SELECT monk_send('call', 'cus_1', idempotency_key => 'late_1')});
psql(q{BEGIN; SELECT monk_send('call', 'cus_1', idempotency_key => 'prepared_1'); PREPARE TRANSACTION 'p1'});
psql(q{SELECT monk_send('call', 'cus_1', idempotency_key => 'after_' || i) FROM generate_series(1, 20) i});
push @all, map { "after_$_" } 1 .. 20;
ok(wait_until('the newer events', 30, sub { api_has(map { "after_$_" } 1 .. 20) }), 'newer events are delivered meanwhile');
$late->query_safe('COMMIT');
$late->quit;
psql(q{COMMIT PREPARED 'p1'});
push @all, 'late_1', 'prepared_1';
ok(wait_until('the late events', 60, sub { api_has('late_1', 'prepared_1') }), 'the late and the prepared transactions are found');
ok(wait_outbox_empty($node), 'and settled');
api_holds_exactly($api, \@all, 'exactly once');

# --- a held snapshot (a REPEATABLE READ reader, as pg_dump) and a session idle in a
#     transaction that wrote something: the work per read stays flat
set_monk_conf($node, 'monk.batch_size' => 100);
psql('CREATE TABLE held (x int)');
my $reader = $node->background_psql('postgres');
$reader->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT count(*) FROM pg_class');
my $writer = $node->background_psql('postgres');
$writer->query_safe('BEGIN; INSERT INTO held VALUES (1)');

# Index entries read from the log's segments, once the worker has flushed its statistics.
sub log_reads
{
	my ($last, $now) = (-1, 0);
	wait_until('the statistics to settle', 30, sub {
			$now = psql(q{SELECT coalesce(sum(idx_tup_read), 0) FROM pg_stat_user_indexes
			               WHERE schemaname = 'monk' AND relname LIKE 'log\_%'});
			return 1 if $now == $last;
			$last = $now;
			return 0;
		});
	return $now;
}

my @work;
for my $round (1 .. 8)
{
	my $before = log_reads();
	my @keys = map { "held_${round}_$_" } 1 .. 1000;
	psql("SELECT monk_send('call', 'cus_1', idempotency_key => 'held_${round}_' || i) FROM generate_series(1, 1000) i");
	push @all, @keys;
	ok(wait_until("round $round", 60, sub { api_has(@keys) }), "round $round is delivered under the held snapshot");
	ok(wait_outbox_empty($node), 'and settled');
	push @work, log_reads() - $before;
}
diag("index entries read per round of 1,000 events: @work");
cmp_ok($work[-1], '<=', 1.5 * $work[0] + 100, 'the work of the last round is no more than the first');
cmp_ok($work[-1], '<=', 3 * 1000, 'a read visits about one index entry per event');

# a reader holding a lock on the log (as pg_dump does): no truncation, nothing waits
$reader->query_safe('SELECT count(*) FROM monk.log');
psql(q{SELECT monk_send('call', 'cus_1', idempotency_key => 'locked_' || i) FROM generate_series(1, 100) i});
push @all, map { "locked_$_" } 1 .. 100;
ok(wait_outbox_empty($node), 'events flow while a reader holds the segments');
is(psql(q{SELECT count(*) FROM pg_locks WHERE NOT granted}), '0', 'nobody waits for a lock');
$reader->query_safe('COMMIT');
$reader->quit;
$writer->query_safe('COMMIT');
$writer->quit;
api_holds_exactly($api, \@all, 'exactly the committed events');

# --- after a drain the segments are truncated: the outbox shrinks on its own
psql(q{SELECT monk_send('call', 'cus_1', idempotency_key => 'bulk_' || i) FROM generate_series(1, 20000) i});
push @all, map { "bulk_$_" } 1 .. 20000;
cmp_ok(psql(q{SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'monk' AND c.relname LIKE 'log\_%'}), '>', 2_000_000, 'a backlog takes room');
ok(wait_outbox_empty($node, undef, 120), 'the backlog drains');
ok(wait_until('the settled segments to be truncated', 60, sub {
			psql(q{SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
			        WHERE n.nspname = 'monk' AND c.relname LIKE 'log\_%'}) < 200_000 }),
	'the outbox falls back to almost nothing without VACUUM FULL');
is(psql(q{SELECT count(*) FROM monk.sent}), '0', 'with monk.retention = 0 nothing is kept');
api_holds_exactly($api, \@all, 'exactly the committed events');

# --- monk.retention keeps what was sent, with when it was accepted
set_monk_conf($node, 'monk.retention' => '1h');
my $seg = psql('SELECT cur_segment FROM monk.queue_state');
psql(q{SELECT monk_send('call', 'cus_1', idempotency_key => 'kept_' || i) FROM generate_series(1, 50) i});
push @all, map { "kept_$_" } 1 .. 50;
ok(wait_outbox_empty($node), 'delivered');
ok(wait_until('the segment to be settled', 60, sub {
			psql("SELECT settled_at IS NOT NULL FROM monk.segment WHERE segment = $seg") eq 't' }),
	'its segment is settled');
is(psql(q{SELECT count(*), count(accepted_at), min(http_status) FROM monk.sent WHERE idempotency_key LIKE 'kept\_%'}),
	'50|50|202', 'monk.sent lists the events with when the API accepted them');
is(psql("SELECT truncated_at IS NULL OR truncated_at < settled_at FROM monk.segment WHERE segment = $seg"), 't',
	'and the segment is kept');
set_monk_conf($node, 'monk.retention' => '0');

# --- pg_dump keeps the queued events and not the settled ones
set_monk_conf($node, 'monk.api_key' => 'wrong_key');
psql(q{SELECT monk_send('call', 'cus_1', idempotency_key => 'dumped_' || i) FROM generate_series(1, 30) i});
ok(wait_until('the worker to pause', 30, sub { psql('SELECT worker_state FROM monk.status') =~ /paused/ }),
	'the worker is paused by a refused key');
my $dump = PostgreSQL::Test::Utils::tempdir() . '/monk.dump';
command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('postgres') ], 'pg_dump');
psql('CREATE DATABASE restored');
command_ok([ 'pg_restore', '-d', $node->connstr('restored'), $dump ], 'pg_restore');
is($node->safe_psql('restored', q{SELECT count(*), count(*) FILTER (WHERE idempotency_key LIKE 'dumped\_%') FROM monk.outbox}),
	'30|30', 'the restored outbox holds exactly the queued events');
set_monk_conf($node, 'monk.api_key' => 'test_key');
push @all, map { "dumped_$_" } 1 .. 30;
ok(wait_outbox_empty($node), 'the queued events are sent once the key is fixed');
api_holds_exactly($api, \@all, 'exactly the committed events');

$node->stop;
$api->stop;
done_testing();
