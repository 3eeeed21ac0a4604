# ALTER EXTENSION monk UPDATE from every released version keeps every queued
# event.  From 0.1: with the new library loaded on a 0.1 schema, monk_send
# keeps queueing into 0.1's table and the worker waits; the update runs while
# a transaction that queued events is still open, moves the events (with
# their retry state) into the log, and the API then receives each exactly
# once.  From 0.2: events queued before the update (the worker parked on a
# wrong key meanwhile) are sent once after it, and monk_capture works.  From
# 0.3: events queued before the update, two versions of a key among them, a
# captured row and a dead letter: each key arrives once at its newest
# version, a correction made after the update lands on the key the row was
# captured with, and the dead letter superseded by a newer version is not
# queued again.  An updated schema is the same as a fresh install's.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkApi;
use MonkTest;

my $api = MonkApi->new(api_key => 'test_key');
my $node = monk_node(api => $api, version => '0.1',
	conf => { 'monk.batch_size' => 50, 'monk.flush_interval' => '10ms' });
my @all;

sub psql { return $node->safe_psql('postgres', $_[0]) }

is(psql(q{SELECT extversion FROM pg_extension WHERE extname = 'monk'}), '0.1', 'monk 0.1 is installed');
psql(q{SELECT monk_send('call', 'cus_1', jsonb_build_object('n', i), idempotency_key => 'before_' || i) FROM generate_series(1, 300) i});
push @all, map { "before_$_" } 1 .. 300;
# two versions of one key, in two transactions
psql(q{SELECT monk_send('call', 'cus_1', '{"v": 1}', idempotency_key => 'v01_k')});
psql(q{SELECT monk_send('call', 'cus_1', '{"v": 2}', idempotency_key => 'v01_k')});
push @all, 'v01_k';
is(psql(q{SELECT count(*) FROM monk.outbox}), '302', "monk_send queues into 0.1's outbox");
psql(q{UPDATE monk.outbox SET attempts = 3, last_status = 503, last_error = 'HTTP 503' WHERE id <= 10});
$node->wait_for_log(qr/nothing is sent until ALTER EXTENSION monk UPDATE/);
is($api->stats->{events_received}, 0, 'the worker waits for the update');

# a transaction that queued events is open when the update starts: the update waits for it
my $open = $node->background_psql('postgres');
$open->query_safe(q{BEGIN; SELECT monk_send('call', 'cus_1', idempotency_key => 'during_' || i) FROM generate_series(1, 50) i});
my $update = $node->background_psql('postgres');
$update->query_until(qr/updating/, "\\echo updating\nALTER EXTENSION monk UPDATE;\n");
ok(wait_until('the update to wait for the open transaction', 30, sub {
			psql(q{SELECT count(*) FROM pg_locks WHERE NOT granted}) > 0 }),
	'the update waits for the transaction that queued events');
$open->query_safe('COMMIT');
$open->quit;
$update->query_safe('SELECT 1');
$update->quit;
push @all, map { "during_$_" } 1 .. 50;
my $default = psql(q{SELECT default_version FROM pg_available_extensions WHERE name = 'monk'});
is(psql(q{SELECT extversion FROM pg_extension WHERE extname = 'monk'}), $default, "the extension is at $default");
is(psql(q{SELECT count(*) FROM monk.outbox WHERE id <= 10 AND attempts = 3 AND last_status = 503}), '10',
	'retry state is kept');

psql(q{SELECT monk_send('call', 'cus_1', idempotency_key => 'after_' || i) FROM generate_series(1, 100) i});
push @all, map { "after_$_" } 1 .. 100;
ok(wait_outbox_empty($node, undef, 60), 'every event queued before, during and after the update is sent');
api_holds_exactly($api, \@all, 'the API holds each exactly once');
is($api->_call('GET', '/_test/events')->{events}{before_7}{event}{properties}{n}, 7, 'as it was queued');
is((api_versions($api, 'v'))[0]->{v01_k}, 2, "a key queued twice under 0.1 holds its newer version");
my $receipts = $api->events;
is(scalar(grep { $receipts->{$_}{receipts} > 1 } grep { $_ ne 'v01_k' } keys %$receipts), 0, 'none was sent twice');

# the updated schema is a fresh install's
my $describe = q{
SELECT string_agg(x, E'\n' ORDER BY x) FROM (
  SELECT format('%s %s %s', c.relname, c.relkind,
         (SELECT string_agg(a.attname || ':' || format_type(a.atttypid, a.atttypmod) || ':' || a.attnotnull
                            || ':' || coalesce(pg_get_expr(d.adbin, d.adrelid), ''), ',' ORDER BY a.attnum)
            FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
           WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped))
    FROM pg_class c WHERE c.relnamespace = 'monk'::regnamespace
  UNION ALL SELECT 'acl ' || c.relname || ' ' || coalesce(c.relacl::text, '')
    FROM pg_class c WHERE c.relnamespace = 'monk'::regnamespace
  UNION ALL SELECT pg_get_indexdef(i.indexrelid)
    FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relnamespace = 'monk'::regnamespace
  UNION ALL SELECT 'view ' || c.relname || ' ' || pg_get_viewdef(c.oid)
    FROM pg_class c WHERE c.relkind = 'v' AND c.relnamespace = 'monk'::regnamespace
  UNION ALL SELECT 'trigger ' || pg_get_triggerdef(t.oid)
    FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
   WHERE c.relnamespace = 'monk'::regnamespace AND NOT t.tgisinternal
  UNION ALL SELECT 'function ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc) || ' '
                   || coalesce(p.proacl::text, '') || ' ' || coalesce(array_to_string(p.proconfig, ','), '')
                   || ' ' || coalesce(obj_description(p.oid, 'pg_proc'), '')
    FROM pg_proc p JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
   WHERE d.refobjid = (SELECT oid FROM pg_extension WHERE extname = 'monk')
  UNION ALL SELECT 'config ' || u.t::regclass::text || ' ' || u.c
    FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS u(t, c) WHERE e.extname = 'monk'
  UNION ALL SELECT 'members ' || count(*)
    FROM pg_depend WHERE refobjid = (SELECT oid FROM pg_extension WHERE extname = 'monk') AND deptype = 'e'
) s(x)};
psql('CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION monk');
is(psql($describe), $node->safe_psql('fresh', $describe), 'an updated schema is the same as a fresh install');

# --- from 0.2, with events queued that the worker cannot send yet (a wrong key parks it)
psql('CREATE DATABASE from_0_2');
psql('CREATE DATABASE from_0_3');
set_monk_conf($node, 'monk.databases' => 'postgres,from_0_2,from_0_3', 'monk.api_key' => 'wrong_key');
$node->restart;
$node->safe_psql('from_0_2', q{CREATE EXTENSION monk VERSION '0.2'});
$node->safe_psql('from_0_2',
	q{SELECT monk_send('call', 'cus_1', idempotency_key => 'v02_' || i) FROM generate_series(1, 200) i});
$node->safe_psql('from_0_2', q{SELECT monk_send('call', 'cus_1', '{"v": 1}', idempotency_key => 'v02_k')});
$node->safe_psql('from_0_2', q{SELECT monk_send('call', 'cus_1', '{"v": 2}', idempotency_key => 'v02_k')});
ok(wait_until('the worker to try the wrong key', 30, sub {
			$node->safe_psql('from_0_2', q{SELECT coalesce(last_error, '') FROM monk.status}) ne '' }),
	'the worker of the 0.2 database is refused');
$node->safe_psql('from_0_2', 'ALTER EXTENSION monk UPDATE');
is($node->safe_psql('from_0_2', q{SELECT extversion FROM pg_extension WHERE extname = 'monk'}), $default,
	"0.2 updates to $default");
is(outbox_count($node, 'from_0_2'), '202', 'with its 202 queued events');
$node->safe_psql('from_0_2', q{
CREATE TABLE captured (id int PRIMARY KEY, customer text NOT NULL);
CREATE TRIGGER captured_monk AFTER INSERT ON captured FOR EACH ROW
  EXECUTE FUNCTION monk_capture('call', 'external_customer_id=customer');
INSERT INTO captured VALUES (1, 'cus_1');
});
set_monk_conf($node, 'monk.api_key' => 'test_key');
ok(wait_outbox_empty($node, 'from_0_2', 60), 'they are sent once the key is right');
# captured after the update: the new default keys
my $captured_v02 = key_prefix($node, 'from_0_2') . 'public.captured:1:call';
api_holds_exactly($api, [ @all, (map { "v02_$_" } 1 .. 200), 'v02_k', $captured_v02 ],
	'the API holds each event of both databases exactly once');
is((api_versions($api, 'v'))[0]->{v02_k}, 2, "a key queued twice under 0.2 holds its newer version");
is($node->safe_psql('from_0_2', $describe), $node->safe_psql('fresh', $describe),
	'a schema updated from 0.2 is the same as a fresh install');

# --- from 0.3: a key's versions, a captured row, a dead letter
$api->faults({ customers => [ 'cus_1', 'cus_2' ] });
$node->safe_psql('from_0_3', q{CREATE EXTENSION monk VERSION '0.3'});
set_monk_conf($node, 'monk.api_key' => 'test_key');
$node->safe_psql('from_0_3', q{SELECT monk_send('call', 'cus_unknown', '{"v": 1}', idempotency_key => 'v03_lettered')});
ok(wait_until('the dead letter', 30, sub {
			$node->safe_psql('from_0_3', q{SELECT count(*) FROM monk.dead_letter}) eq '1' }),
	'0.3 dead-letters a refused event');
set_monk_conf($node, 'monk.api_key' => 'wrong_key');
$node->safe_psql('from_0_3', q{
SELECT monk_send('call', 'cus_1', jsonb_build_object('v', 1), idempotency_key => 'v03_' || i) FROM generate_series(1, 100) i;
SELECT monk_send('call', 'cus_1', jsonb_build_object('v', 2), idempotency_key => 'v03_' || i) FROM generate_series(1, 100) i;
SELECT monk_send('call', 'cus_2', '{"v": 2}', idempotency_key => 'v03_lettered');
CREATE TABLE captured (id int PRIMARY KEY, customer text NOT NULL, tokens int NOT NULL);
CREATE TRIGGER captured_monk AFTER INSERT OR UPDATE ON captured FOR EACH ROW
  EXECUTE FUNCTION monk_capture('call', 'external_customer_id=customer', 'properties=tokens');
INSERT INTO captured VALUES (1, 'cus_1', 1);
});
ok(wait_until('the worker to try the wrong key', 30, sub {
			$node->safe_psql('from_0_3', q{SELECT worker_state FROM monk.status}) eq 'paused: authentication failed' }),
	'the worker of the 0.3 database is refused');
my $captured_key = $node->safe_psql('from_0_3', q{SELECT idempotency_key FROM monk.outbox WHERE event LIKE '%"tokens"%'});
$node->safe_psql('from_0_3', 'ALTER EXTENSION monk UPDATE');
is($node->safe_psql('from_0_3', q{SELECT extversion FROM pg_extension WHERE extname = 'monk'}), $default,
	"0.3 updates to $default");
is(outbox_count($node, 'from_0_3'), '202', 'with its 202 queued events');
$node->safe_psql('from_0_3', q{UPDATE captured SET tokens = 2});
set_monk_conf($node, 'monk.api_key' => 'test_key');
ok(wait_outbox_empty($node, 'from_0_3', 60), 'they are sent once the key is right');
my ($v) = api_versions($api, 'v');
is(scalar(grep { ($v->{"v03_$_"} // 0) != 2 } 1 .. 100), 0, 'each key of 0.3 holds its newer version');
is($v->{v03_lettered}, 2, 'so does the dead-lettered key');
my ($tokens) = api_versions($api, 'tokens');
is($tokens->{$captured_key}, 2, "the correction made after the update lands on 0.3's key ($captured_key)");
my ($rc, $out, $err) = $node->psql('from_0_3', 'SELECT monk_retry_dead_letters()');
is($out, '0', 'the superseded dead letter is not queued again');
api_holds_exactly($api, [ @all, (map { "v02_$_" } 1 .. 200), 'v02_k', $captured_v02,
		(map { "v03_$_" } 1 .. 100), 'v03_lettered', $captured_key ],
	'the API holds each event of the three databases exactly once');
is($node->safe_psql('from_0_3', $describe), $node->safe_psql('fresh', $describe),
	'a schema updated from 0.3 is the same as a fresh install');

$node->stop;
$api->stop;
done_testing();
