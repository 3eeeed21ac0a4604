# The latest committed version of a key wins, under concurrency: a version
# queued after the transaction of an older one committed (a row lock forces
# it) wins though its transaction id is the older one, whether the worker
# reads both in one slice or in several; the truncation of a segment never
# removes an event whose transaction committed while the worker looked; a
# restart with monk.retention never sends an older version last; a dead
# letter that a newer version supersedes is never queued again; pg_dump and
# pg_restore never make an older version the newest.  The worker is held at
# named steps (monk.test_wait_points) where an interleaving needs it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key', customers => [ map { "cus_$_" } 0 .. 9 ]);
my $node = monk_node(api => $api, databases => [ 'postgres', 'restored' ],
	conf => {
		'monk.batch_size'        => 5,
		'monk.flush_interval'    => '10ms',
		'monk.test_wait_points'  => 'read,truncate',
	});

sub psql { return $node->safe_psql('postgres', $_[0]) }

$node->safe_psql('restored', 'DROP EXTENSION monk');
psql(q{
CREATE TABLE t (id int PRIMARY KEY, customer text NOT NULL, tokens int NOT NULL);
CREATE TRIGGER t_capture AFTER INSERT OR UPDATE ON t
    FOR EACH ROW EXECUTE FUNCTION monk_capture('api_call', 'external_customer_id=customer', 'properties=tokens');
});

# Each row (or key) is written by two transactions serialized as a row lock
# would: A takes its transaction id first, B writes and commits, then A
# writes (after B's commit) and commits.  The worker is held before its read
# all along, so that it sees both commits in one window.
sub serialized_writers
{
	my ($round, $n, $write_b, $write_a) = @_;
	my $hold = hold_wait_point($node, 'read');
	my $a = $node->background_psql('postgres');
	my $b = $node->background_psql('postgres');
	for my $i (1 .. $n)
	{
		$a->query_safe('BEGIN; SELECT pg_current_xact_id()');
		$b->query_safe($write_b->($i));
		$a->query_safe($write_a->($i) . '; COMMIT');
	}
	$a->quit;
	$b->quit;
	$hold->quit;
}

for my $round ([ 'several slices', 5 ], [ 'one slice', 1000 ])
{
	my ($how, $batch) = @$round;
	set_monk_conf($node, 'monk.batch_size' => $batch);
	psql('TRUNCATE t');
	psql(q{INSERT INTO t SELECT i, 'cus_1', 1 FROM generate_series(1, 30) i});
	ok(wait_outbox_empty($node), "$how: the first versions are sent");

	# 1. captured corrections serialized by the row lock
	serialized_writers($batch, 30,
		sub { "UPDATE t SET tokens = 3 WHERE id = $_[0]" },
		sub { "UPDATE t SET tokens = tokens + 10 WHERE id = $_[0]" });
	# 2. monk_send, commits in the opposite order of the transaction ids
	serialized_writers($batch, 20,
		sub { "SELECT monk_send('call', 'cus_1', '{\"v\": \"B\"}', idempotency_key => 'k${batch}_$_[0]')" },
		sub { "SELECT monk_send('call', 'cus_1', '{\"v\": \"A\"}', idempotency_key => 'k${batch}_$_[0]')" });
	ok(wait_outbox_empty($node), "$how: the corrections are sent");

	my ($tokens) = api_versions($api, 'tokens');
	my @wrong = grep { ($tokens->{$_} // '') ne '13' } grep { /:api_call$/ } sort keys %$tokens;
	is(scalar(@wrong), 0, "$how: every captured row holds its last committed value (13) at the API")
	  or diag("wrong: @wrong[0 .. ($#wrong < 5 ? $#wrong : 4)]: " . join(',', map { $tokens->{$_} } @wrong[0 .. ($#wrong < 5 ? $#wrong : 4)]));
	my ($v) = api_versions($api, 'v');
	my @wrong_v = grep { ($v->{"k${batch}_$_"} // '') ne 'A' } 1 .. 20;
	is(scalar(@wrong_v), 0, "$how: every key sent by monk_send holds the version committed last");
}
set_monk_conf($node, 'monk.batch_size' => 5);

# two different keys whose hashes are equal (hashtextextended(k, 0) of both is
# 1311768467463790320): the one read second, with the lower id, is not taken
# for an older version of the other
is($node->safe_psql('postgres', q{SELECT count(DISTINCT hashtextextended(k, 0)) FROM unnest(ARRAY['oRhNwN3RYnmY', '8UXHuyIWSgvH']) k}),
	'1', 'two keys with one hash');
serialized_writers(0, 1,
	sub { "SELECT monk_send('call', 'cus_1', '{\"v\": \"B\"}', idempotency_key => '8UXHuyIWSgvH')" },
	sub { "SELECT monk_send('call', 'cus_1', '{\"v\": \"A\"}', idempotency_key => 'oRhNwN3RYnmY')" });
ok(wait_outbox_empty($node), 'both are sent');
my ($collided) = api_versions($api, 'v');
is(($collided->{'8UXHuyIWSgvH'} // 'nothing') . ',' . ($collided->{oRhNwN3RYnmY} // 'nothing'), 'B,A',
	'the API holds both keys');

# a window past the keys the worker keeps in memory (4 MB of keys: 1,500 keys
# of 3,2xx bytes that do not compress, longer than a btree entry can be; 8
# keys in the sanitizer build): the newer versions, with the higher ids, are
# read first (their transaction id is the older one), the older versions
# after them, out of id order; the worker then reads the window's repeated
# keys from the log, and every older version stays unsent
{
	my $hold = hold_wait_point($node, 'read');
	my $a = $node->background_psql('postgres');
	my $b = $node->background_psql('postgres');
	my $send = sub {
		"SELECT count(monk_send('call', 'cus_1', jsonb_build_object('v', '$_[0]'), "
		  . "idempotency_key => 'long_' || i || '_' || (SELECT string_agg(md5(i || '_' || g), '') FROM generate_series(1, 100) g)))"
		  . " FROM generate_series(1, 1500) i";
	};
	$a->query_safe('BEGIN; SELECT pg_current_xact_id()');
	$b->query_safe($send->('old'));
	$a->query_safe($send->('new') . '; COMMIT');
	$a->quit;
	$b->quit;
	$hold->quit;
	ok(wait_outbox_empty($node, undef, 120), 'a window of 3,000 events with long keys is sent');
	my ($v, $history) = api_versions($api, 'v');
	my @long = grep { /^long_/ } keys %$v;
	my @wrong = grep { $v->{$_} ne 'new' || @{ $history->{$_} } != 1 } @long;
	is(scalar(@long) . ' keys, ' . scalar(@wrong) . ' wrong', '1500 keys, 0 wrong',
		'past the key table in memory, each long key holds its newer version, sent once');
	is(psql(q{SELECT count(*) FROM pg_class WHERE relname = 'monk_window_keys' AND relpersistence = 't'}), '1',
		"the worker read the window's repeated keys from the log (its temporary table)");
}

# 3. a segment's truncation never removes an event whose transaction
# committed while the worker was looking: the transaction stays open while
# the current segment moves on, the worker is held just before it locks the
# segment (its transaction's snapshot taken), the transaction commits, the
# worker goes on
my $writer = $node->background_psql('postgres');
$writer->query_safe(q{BEGIN; SELECT monk_send('call', 'cus_1', idempotency_key => 'truncation_race')});
my $segment = psql('SELECT cur_segment FROM monk.queue_state');
ok(wait_until('the current segment to move on', 60, sub {
	queue_events($node, 'filler_' . int(rand(1e9)), 1);
	psql('SELECT cur_segment FROM monk.queue_state') ne $segment }), 'the current segment moves on');
my $hold = hold_wait_point($node, 'truncate');
ok(worker_waits_at($node, 'truncate'), 'the worker is held before it locks a segment');
$writer->query_safe('COMMIT');
$writer->quit;
$hold->quit;
ok(wait_until('truncation_race at the API', 60, sub { grep { $_ eq 'truncation_race' } @{ $api->keys } }),
	'the event committed meanwhile is sent, not truncated away');

# 4. monk.retention and a restart: one batch backs off (the frontier stays
# behind it), one transaction queues two versions of a key, the newer one is
# accepted; after a fast restart the API still holds the newer one
set_monk_conf($node, 'monk.retention' => '3600', 'monk.max_retries' => 0, 'monk.retry_max_delay' => '60s');
$api->faults({ script => [503], retry_after => 0 });
queue_events($node, 'held', 5);
ok(wait_until('the parked batch', 30, sub { psql('SELECT count(*) FROM monk.outbox_attempts') == 5 }),
	'a batch is refused and parked');
psql(q{SELECT monk_send('call', 'cus_1', '{"v": 1}', idempotency_key => 'retained'),
              monk_send('call', 'cus_1', '{"v": 2}', idempotency_key => 'retained')});
# (it takes about 20 s here, not a moment: the worker reads it at a later
# look, not at its commit, while a batch is parked -- a latency noted in
# issue 21's closing note; 55 s is still before the parked batch's retry)
ok(wait_until('the newer version at the API', 55, sub { (api_versions($api, 'v'))[0]->{retained} // 0 }),
	'the newer version is accepted while the batch backs off');
$api->clear_faults;
set_monk_conf($node, 'monk.max_retries' => 10, 'monk.retry_max_delay' => '500ms');
$node->restart(mode => 'fast');
ok(wait_outbox_empty($node), 'after the restart everything is sent');
is((api_versions($api, 'v'))[0]->{retained}, 2, 'the API still holds the newer version');
set_monk_conf($node, 'monk.retention' => '0');

# 5. a dead letter that a newer version supersedes is never queued again
psql(q{SELECT monk_send('call', 'cus_unknown', '{"v": 1}', idempotency_key => 'lettered')});
ok(wait_until('the dead letter', 30, sub { psql(q{SELECT count(*) FROM monk.dead_letter WHERE idempotency_key = 'lettered'}) == 1 }),
	'the refused version is dead-lettered');
psql(q{SELECT monk_send('call', 'cus_1', '{"v": 2}', idempotency_key => 'lettered')});
ok(wait_until('the superseded mark', 30, sub {
	psql(q{SELECT superseded_id IS NOT NULL FROM monk.dead_letter WHERE idempotency_key = 'lettered'}) eq 't' }),
	'the accepted newer version marks the dead letter superseded');
my ($rc, $out, $err) = $node->psql('postgres', 'SELECT monk_retry_dead_letters()');
is($out, '0', 'monk_retry_dead_letters queues nothing');
like($err, qr/1 dead letters were not queued again: a newer version of their key was accepted or is queued/,
	'and says why');
# a newer version still queued (the worker held) supersedes too
psql(q{SELECT monk_send('call', 'cus_unknown', '{"v": 1}', idempotency_key => 'lettered2')});
ok(wait_until('the dead letter', 30, sub { psql(q{SELECT count(*) FROM monk.dead_letter WHERE idempotency_key = 'lettered2'}) == 1 }),
	'another refused version is dead-lettered');
$hold = hold_wait_point($node, 'read');
psql(q{SELECT monk_send('call', 'cus_2', '{"v": 2}', idempotency_key => 'lettered2')});
is(psql('SELECT monk_retry_dead_letters()'), '0', 'a newer version still queued keeps it from being queued again');
$hold->quit;
ok(wait_outbox_empty($node), 'the outbox drains');
is((api_versions($api, 'v'))[0]->{lettered}, 2, 'the API holds the newer version of the first key');
# a dead letter a session holds locked never stops the worker
psql(q{SELECT monk_send('call', 'cus_unknown', '{"v": 1}', idempotency_key => 'locked_letter')});
ok(wait_until('the dead letter', 30, sub { psql(q{SELECT count(*) FROM monk.dead_letter WHERE idempotency_key = 'locked_letter'}) == 1 }),
	'a third refused version is dead-lettered');
my $locker = $node->background_psql('postgres');
$locker->query_safe(q{BEGIN; SELECT id FROM monk.dead_letter WHERE idempotency_key = 'locked_letter' FOR UPDATE});
psql(q{SELECT monk_send('call', 'cus_1', '{"v": 2}', idempotency_key => 'locked_letter')});
queue_events($node, 'behind_lock', 20);
ok(wait_outbox_empty($node), 'with that dead letter locked by a session, the newer version and the events behind it are sent');
$locker->query_safe('COMMIT');
$locker->quit;
is((api_versions($api, 'v'))[0]->{lettered2}, 2, 'and of the second');

# 6. pg_dump / pg_restore with two versions of a key in two segments, the
# older one in the later-numbered segment (as after the segments wrapped);
# the worker cannot send (a wrong key), so both stay queued
set_monk_conf($node, 'monk.api_key' => 'wrong_key');
ok(wait_until('the pause', 30, sub {
	psql(q{SELECT monk_send('call', 'cus_1', idempotency_key => 'probe_' || pg_catalog.random())});
	monk_status($node, 'worker_state', 'postgres') eq 'paused: authentication failed' }), 'the worker is paused');
psql(q{
INSERT INTO monk.log_3 (segment, txid, id, idempotency_key, event, queued_at)
  SELECT 3, 0, nextval('monk.outbox_id_seq'), 'wrapped', monk.event_json('call', 'cus_1', '{"v": 1}', now(), 'wrapped'), now();
INSERT INTO monk.log_0 (segment, txid, id, idempotency_key, event, queued_at)
  SELECT 0, 0, nextval('monk.outbox_id_seq'), 'wrapped', monk.event_json('call', 'cus_1', '{"v": 2}', now(), 'wrapped'), now();
});
my $dump = PostgreSQL::Test::Utils::tempdir . '/monk.dump';
command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('postgres'), '-f', $dump ], 'pg_dump');
command_ok([ 'pg_restore', '-d', $node->connstr('restored'), $dump ], 'pg_restore into another database');
is($node->safe_psql('restored', q{SELECT count(*) FROM monk.log WHERE idempotency_key = 'wrapped'}), '1',
	'the dump keeps the newest queued version of the key only');
set_monk_conf($node, 'monk.api_key' => 'test_key');
ok(wait_outbox_empty($node, 'restored', 60), 'the restored database sends its events');
is((api_versions($api, 'v'))[0]->{wrapped}, 2, 'the API holds the newer version');
# the restored dead letters keep their ids; new ones go on after them
my $restored_letters = $node->safe_psql('restored', 'SELECT count(*) FROM monk.dead_letter');
cmp_ok($restored_letters, '>', 0, 'the dead letters are restored');
$node->safe_psql('restored', q{SELECT monk_send('call', 'cus_unknown', idempotency_key => 'refused_after_restore')});
ok(wait_until('the new dead letter', 30, sub {
	$node->safe_psql('restored', q{SELECT count(*) FROM monk.dead_letter WHERE idempotency_key = 'refused_after_restore'}) == 1 }),
	'a refusal after the restore is dead-lettered (its id follows the restored ones)');

$node->stop;
$api->stop;
done_testing();
