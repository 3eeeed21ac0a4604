# Sizes have limits with clear errors, and no event stops the ones behind
# it: monk_send and monk_capture refuse an event larger than
# monk.max_event_size (54000, naming the size and the setting), an export
# dead-letters such a row and goes on, an event queued under a higher limit
# is dead-lettered by the worker with the reason while the events behind it
# are delivered, and a batch is cut by bytes (monk.max_request_size) as well
# as by count.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key');
my $node = monk_node(api => $api, conf => { 'monk.batch_size' => 5000 });
my $kp = key_prefix($node);

sub psql { return $node->safe_psql('postgres', $_[0]) }

# 1. monk_send: 2 MB of properties against the default 1 MB
my ($rc, $out, $err) = $node->psql('postgres',
	q{SELECT monk_send('call', 'cus_1', jsonb_build_object('blob', repeat('x', 2 * 1024 * 1024)))});
like($err, qr/ERROR:  invalid event: the event is (\d+ bytes, )?more than monk.max_event_size/, 'monk_send refuses an event too large');
like($err, qr/monk.max_event_size allows 1048512 bytes|monk.max_event_size allows 1048576 bytes/, 'naming the limit');
($rc, $out, $err) = $node->psql('postgres', q{
DO $$ BEGIN PERFORM monk_send('call', 'cus_1', jsonb_build_object('blob', repeat(chr(1), 400000)));
EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'code=%', SQLSTATE; END $$});
like($err, qr/code=54000/, 'with SQLSTATE 54000 (400,000 control characters render as 2.4 MB)');
# 200,000,000 control characters would render as 1.2 GB: refused before any
# of it is copied (0.3 ran out of its allocation limit, XX000, after
# building most of it)
($rc, $out, $err) = $node->psql('postgres', q{
DO $$ BEGIN PERFORM monk_send('call', 'cus_1', jsonb_build_object('blob', repeat(chr(1), 200000000)));
EXCEPTION WHEN OTHERS THEN RAISE NOTICE 'code=% %', SQLSTATE, SQLERRM; END $$});
like($err, qr/code=54000 invalid event: the event is more than monk.max_event_size \(\d+ bytes\)/, 'a property of 200,000,000 control characters: 54000 at once');

# 2. monk_capture refuses the row
psql(q{
CREATE TABLE t (id int PRIMARY KEY, customer text, note text);
CREATE TRIGGER t_capture AFTER INSERT ON t FOR EACH ROW
    EXECUTE FUNCTION monk_capture('noted', 'external_customer_id=customer', 'properties=note');
});
($rc, $out, $err) = $node->psql('postgres', q{INSERT INTO t VALUES (1, 'cus_1', repeat('y', 2 * 1024 * 1024))});
like($err, qr/the event is (\d+ bytes, )?more than monk.max_event_size/, 'monk_capture refuses the row whose event is too large');
($rc, $out, $err) = $node->psql('postgres', q{INSERT INTO t VALUES (1, 'cus_1', repeat(chr(1), 200000000))});
like($err, qr/the event is more than monk.max_event_size \(\d+ bytes\)/,
	'monk_capture refuses a column of 200,000,000 control characters before escaping it');

# 3. an export dead-letters such a row and goes on
psql(q{
CREATE TABLE src (id bigint PRIMARY KEY, external_customer_id text, event_name text, properties jsonb);
INSERT INTO src VALUES (1, 'cus_1', 'e', '{}'), (2, 'cus_1', 'e', jsonb_build_object('blob', repeat('z', 2 * 1024 * 1024))),
                       (3, 'cus_1', 'e', '{}');
});
is(psql(q{SELECT events_sent || '/' || events_failed FROM monk_batch_export('src')}), '2/1',
	'monk_batch_export sends the other rows and dead-letters the one too large');
like(psql(q{SELECT error FROM monk.dead_letter WHERE source_id = 2}), qr/more than monk.max_event_size/, 'with the reason');

# 4. queued under a higher limit, then the limit lowered: dead-lettered, never stuck
set_monk_conf($node, 'monk.max_event_size' => '8MB', 'monk.max_request_size' => '16MB', 'monk.api_key' => 'wrong_key');
psql(q{SELECT monk_send('call', 'cus_1', idempotency_key => 'before_' || i) FROM generate_series(1, 10) i});
# with a key of 3,205 bytes that do not compress: longer than a btree entry can be
psql(q{SELECT monk_send('call', 'cus_1', jsonb_build_object('blob', repeat('w', 3 * 1024 * 1024)),
                        idempotency_key => 'huge_' || (SELECT string_agg(md5('h' || g), '') FROM generate_series(1, 100) g))});
psql(q{SELECT monk_send('call', 'cus_1', idempotency_key => 'after_' || i) FROM generate_series(1, 10) i});
ok(wait_until('the pause', 30, sub { monk_status($node, 'worker_state') eq 'paused: authentication failed' }), 'queued while the worker is paused');
set_monk_conf($node, 'monk.max_event_size' => '1MB', 'monk.max_request_size' => '4MB', 'monk.api_key' => 'test_key');
ok(wait_outbox_empty($node), 'the outbox drains');
is(psql(q{SELECT left(idempotency_key, 5) || length(idempotency_key) FROM monk.dead_letter WHERE source = 'outbox'}), 'huge_3205',
	'the event too large is dead-lettered, with its long key');
like(psql(q{SELECT error FROM monk.dead_letter WHERE source = 'outbox'}), qr/more than monk.max_event_size/, 'with the reason');
api_holds_exactly($api, [ "${kp}1", "${kp}3", (map { "before_$_" } 1 .. 10), (map { "after_$_" } 1 .. 10) ],
	'the events before and after it are delivered');

# 5. a batch is cut by bytes: 64 kB bodies for events of about 1 kB
set_monk_conf($node, 'monk.max_request_size' => '64kB', 'monk.max_event_size' => '64kB');
$api->reset;
psql(q{SELECT monk_send('call', 'cus_1', jsonb_build_object('pad', repeat('p', 1000)), idempotency_key => 'cut_' || i)
         FROM generate_series(1, 300) i});
ok(wait_outbox_empty($node), 'the events are sent');
my @sizes = map { $_->{events} } grep { ($_->{path} // '') =~ m{/v1/events/batch} } @{ $api->requests(100) };
cmp_ok(scalar(@sizes), '>=', 5, 'in several requests (' . scalar(@sizes) . ')');
cmp_ok((sort { $b <=> $a } @sizes)[0], '<=', 63, 'none holding more than 64 kB of events');
api_holds_exactly($api, [ map { "cut_$_" } 1 .. 300 ], 'the API holds all of them');

$node->stop;
$api->stop;
done_testing();
