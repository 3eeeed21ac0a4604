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

# monk_batch_export too: rows committed with synchronous_commit = off, then
# exported by a session whose transaction never commits (the server stops
# first): what the API holds must have survived.
$node->safe_psql('postgres', q{
SET synchronous_commit = on;
CREATE TABLE src (id bigint PRIMARY KEY, event_name text, external_customer_id text)});
$node->safe_psql('postgres', q{INSERT INTO src SELECT i, 'exported', 'cus_1' FROM generate_series(1, 20) i});
my $exporter = $node->background_psql('postgres');
$exporter->query_safe('BEGIN');
is($exporter->query_safe(q{SELECT events_sent FROM monk_batch_export('src')}), '20', 'the rows are exported');
$node->stop('immediate');
$exporter->quit;
$node->start;
is($node->safe_psql('postgres', 'SELECT count(*) FROM src'), '20',
	'the rows the export sent survive a stop that flushes nothing');
my $kp = key_prefix($node);
is(scalar(grep { /^\Q$kp\E\d+$/ } @{ $api->keys }), 20, 'and the API holds them');

# The flush asks for what was inserted, not the insert position: when the
# WAL ends exactly at a page's start, the insert position points past the
# next page's header, which nothing has written, and flushing to there
# fails ("xlog flush request ... is not satisfied").  The worker is held
# before it takes its snapshot while a session pads the WAL with messages
# to a page's end, then let go in the same statement.
$node->safe_psql('postgres', q{
CREATE FUNCTION pad_wal_to_page() RETURNS text LANGUAGE plpgsql AS $$
DECLARE
	off int;
BEGIN
	FOR i IN 1 .. 50 LOOP
		off := ((pg_current_wal_insert_lsn() - '0/0'::pg_lsn) % 8192)::int;
		IF off = 24 THEN
			RETURN 'at a page start';
		END IF;
		-- a record is 55 bytes and the message (a long one), aligned to 8
		IF 8192 - off < 320 THEN
			PERFORM pg_logical_emit_message(false, 'p', repeat('x', 300));
		ELSE
			PERFORM pg_logical_emit_message(false, 'p', repeat('x', 8192 - off - 55));
		END IF;
	END LOOP;
	RETURN 'missed';
END $$});
set_monk_conf($node, 'monk.test_wait_points' => 'read');
my $hold = hold_wait_point($node, 'read');
queue_events($node, 'page_start', 1);
worker_waits_at($node, 'read');
my $log_offset = -s $node->logfile;
is($hold->query_safe(q{SELECT pad_wal_to_page()
	  || ' ' || pg_advisory_unlock(hashtext('monk'), hashtext('read'))}),
	'at a page start true', 'the WAL ends at a page start when the worker takes its snapshot');
ok(wait_until('page_start_1 at the API', 30, sub { grep { $_ eq 'page_start_1' } @{ $api->keys } }),
	'the event is sent');
ok(!$node->log_contains('is not satisfied', $log_offset), 'the flush asked for nothing past the WAL');
$hold->quit;

$node->stop;
$api->stop;
done_testing();
