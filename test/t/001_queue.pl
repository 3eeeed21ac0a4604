# monk_send queues an event in the caller's transaction: a committed event is
# in the outbox, a rolled-back one never is, from a plain statement as from a
# trigger, with savepoints, and from concurrent sessions.  Without the
# preloaded library monk_send refuses clearly.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MonkTest;

my $node = monk_cluster('queue');
$node->append_conf('postgresql.conf', monk_extra_conf() . qq{
shared_preload_libraries = 'monk'
monk.databases = 'postgres'
monk.base_url = 'http://127.0.0.1:9'
});
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION monk');
billed_table($node, 'api_calls', 'api_call', 'call_');

sub keys_queued
{
	return $node->safe_psql('postgres',
		q{SELECT coalesce(string_agg(idempotency_key, ',' ORDER BY id), '') FROM monk.outbox});
}

# committed and rolled back, from a statement
$node->safe_psql('postgres', q{SELECT monk_send('api_call', 'cus_1', idempotency_key => 'committed')});
$node->safe_psql('postgres', q{BEGIN; SELECT monk_send('api_call', 'cus_1', idempotency_key => 'rolled-back'); ROLLBACK;});
is(keys_queued(), 'committed', 'a committed event is queued, a rolled-back one is not');

# from a trigger, committed and rolled back
$node->safe_psql('postgres', q{INSERT INTO api_calls (customer, tokens) VALUES ('cus_1', 10), ('cus_2', 20)});
$node->safe_psql('postgres', q{BEGIN; INSERT INTO api_calls (customer, tokens) VALUES ('cus_3', 30); ROLLBACK;});
is(keys_queued(), 'committed,call_1,call_2', 'the trigger queues the events of committed rows only');
is($node->safe_psql('postgres', q{SELECT event::json->'properties'->>'tokens' FROM monk.outbox WHERE idempotency_key = 'call_2'}),
	'20', 'the trigger event carries the row\'s properties');

# an error in the statement after the trigger fired rolls the event back
my ($rc, $out, $err) = $node->psql('postgres',
	q{BEGIN; INSERT INTO api_calls (customer, tokens) VALUES ('cus_4', 40); SELECT 1/0; COMMIT;});
like($err, qr/division by zero/, 'the transaction failed');
is(keys_queued(), 'committed,call_1,call_2', 'an event of a failed transaction is not queued');

# savepoints: the event of a rolled-back savepoint is gone, the rest stays
$node->safe_psql('postgres', q{
BEGIN;
SELECT monk_send('api_call', 'cus_1', idempotency_key => 'sp-kept');
SAVEPOINT s;
SELECT monk_send('api_call', 'cus_1', idempotency_key => 'sp-undone');
ROLLBACK TO SAVEPOINT s;
COMMIT;
});
is(keys_queued(), 'committed,call_1,call_2,sp-kept', 'rolling back to a savepoint drops its events only');

# an invalid event raises in the caller's transaction and queues nothing
($rc, $out, $err) = $node->psql('postgres',
	q{INSERT INTO api_calls (customer, tokens) VALUES ('', 1)});
like($err, qr/external_customer_id must not be empty/, 'an invalid event from a trigger fails the insert');
is($node->safe_psql('postgres', q{SELECT count(*) FROM api_calls}), '2', 'and the row is not inserted');

# concurrent sessions: each commits or rolls back on its own
my @sessions = map { $node->background_psql('postgres') } 1 .. 3;
$_->query_safe('BEGIN') for @sessions;
$sessions[$_]->query_safe("SELECT monk_send('api_call', 'cus_c', idempotency_key => 'conc-$_')") for 0 .. 2;
$sessions[0]->query_safe('COMMIT');
$sessions[1]->query_safe('ROLLBACK');
$sessions[2]->query_safe('COMMIT');
$_->quit for @sessions;
is($node->safe_psql('postgres', q{SELECT string_agg(idempotency_key, ',' ORDER BY idempotency_key) FROM monk.outbox WHERE idempotency_key LIKE 'conc-%'}),
	'conc-0,conc-2', 'concurrent transactions: committed events queued, rolled-back ones not');

# monk.max_outbox_events: past it monk_send fails fast with 53400 and a hint
# (the outbox cannot drain here: monk.base_url points nowhere).  The depth
# comes from the statistics, which every session above flushed at its exit.
$node->append_conf('postgresql.conf', 'monk.max_outbox_events = 6');
$node->reload;
ok(wait_until('the reload', 30, sub { $node->safe_psql('postgres', 'SHOW monk.max_outbox_events') eq '6' }),
	'monk.max_outbox_events is set to the depth of the outbox');
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT monk_send('api_call', 'cus_1', idempotency_key => 'over')}, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:  53400: the monk outbox is full/, 'a full outbox refuses new events with 53400');
like($err, qr/HINT:  Check monk.status/, 'with a hint');
is($node->safe_psql('postgres', q{SELECT count(*) FROM monk.outbox WHERE idempotency_key = 'over'}), '0',
	'the refused event was not queued');
$node->append_conf('postgresql.conf', 'monk.max_outbox_events = 0');
$node->reload;

# the outbox survives an immediate shutdown (it is a logged table)
$node->stop('immediate');
$node->start;
is(keys_queued(), 'committed,call_1,call_2,sp-kept,conc-0,conc-2', 'queued events survive a crash');

# without shared_preload_libraries monk_send refuses with 55000
$node->append_conf('postgresql.conf', "shared_preload_libraries = ''");
$node->restart;
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT monk_send('api_call', 'cus_1')}, extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/ERROR:  55000: monk must be loaded via shared_preload_libraries/, 'monk_send without the preloaded library: 55000');
like($err, qr/HINT:  Add monk to shared_preload_libraries/, 'with a hint');
($rc, $out, $err) = $node->psql('postgres', q{SELECT * FROM monk.status});
like($err, qr/monk must be loaded via shared_preload_libraries/, 'monk.status without the preloaded library says why');

# the mistake is told at setup, not at the application's first event (issue
# 21): CREATE EXTENSION warns, and still succeeds (pg_restore onto such a
# server must work); so does a second line that names only another library
$node->safe_psql('postgres', 'CREATE DATABASE unloaded');
($rc, $out, $err) = $node->psql('unloaded', 'CREATE EXTENSION monk');
is($rc, 0, 'CREATE EXTENSION without the preloaded library succeeds');
like($err, qr/WARNING:  monk is not loaded by shared_preload_libraries.*\n.*HINT:  Add monk to shared_preload_libraries \(a single line/s,
	'with a warning that says what to write');
like($err, qr/WARNING:  database "unloaded" is not in monk.databases: no worker sends its events/,
	'and the warning that no worker exports the database');
# a capture trigger, which would fail at its first row, is told of at its creation
($rc, $out, $err) = $node->psql('unloaded', q{
	CREATE TABLE calls (id bigint PRIMARY KEY, customer text);
	CREATE TRIGGER calls_monk AFTER INSERT ON calls FOR EACH ROW
		EXECUTE FUNCTION monk_capture('call', 'external_customer_id=customer')});
is($rc, 0, 'CREATE TRIGGER ... monk_capture without the preloaded library succeeds');
like($err, qr/WARNING:  monk is not loaded by shared_preload_libraries: trigger "calls_monk" will fail at the first row it captures.*HINT:  Add monk to shared_preload_libraries/s,
	'with a warning naming the trigger and what to write');
($rc, $out, $err) = $node->psql('unloaded', q{CREATE TRIGGER calls_other BEFORE INSERT ON calls FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()});
is($err, '', 'another trigger is created without a word');
# only monk's own monk_capture: not a function of that name in another schema
($rc, $out, $err) = $node->psql('unloaded', q{
	CREATE SCHEMA other;
	CREATE FUNCTION other.monk_capture() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NULL; END';
	CREATE TRIGGER calls_namesake AFTER INSERT ON calls FOR EACH ROW EXECUTE FUNCTION other.monk_capture()});
is("$rc $err", '0 ', 'a trigger of another function named monk_capture is created without a word');
# a role that is not superuser (it cannot read shared_preload_libraries): warned too, and never refused
$node->safe_psql('unloaded', q{
	CREATE ROLE app_owner LOGIN;
	CREATE TABLE app_calls (id bigint PRIMARY KEY, customer text);
	ALTER TABLE app_calls OWNER TO app_owner;
	GRANT EXECUTE ON FUNCTION monk_capture() TO app_owner});
($rc, $out, $err) = $node->psql('unloaded', q{
	CREATE TRIGGER app_calls_monk AFTER INSERT ON app_calls FOR EACH ROW
		EXECUTE FUNCTION monk_capture('call', 'external_customer_id=customer');
	CREATE TRIGGER app_calls_other BEFORE INSERT ON app_calls FOR EACH ROW
		EXECUTE FUNCTION suppress_redundant_updates_trigger()}, extra_params => [ '-U', 'app_owner' ]);
is($rc, 0, 'a table owner who is not superuser creates both triggers');
like($err, qr/\A[^\n]*WARNING:  monk is not loaded by shared_preload_libraries: trigger "app_calls_monk" will fail[^\n]*\nDETAIL:[^\n]*\nHINT:[^\n]*\z/,
	'with the one warning, for the capture trigger');
# the extension's owner lost superuser (so may not read shared_preload_libraries): no CREATE TRIGGER fails for it
$node->safe_psql('postgres', q{CREATE ROLE ext_admin SUPERUSER LOGIN; CREATE DATABASE owned OWNER ext_admin});
$node->safe_psql('owned', 'CREATE EXTENSION monk; CREATE TABLE t (id int)', extra_params => [ '-U', 'ext_admin' ]);
$node->safe_psql('postgres', 'ALTER ROLE ext_admin NOSUPERUSER');
($rc, $out, $err) = $node->psql('owned', q{CREATE TRIGGER t_other BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger()});
is("$rc $err", '0 ', 'an extension owner no longer superuser fails no CREATE TRIGGER');
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'monk'\nshared_preload_libraries = 'pg_stat_statements'");
$node->restart;
($rc, $out, $err) = $node->psql('unloaded', 'DROP EXTENSION monk CASCADE; CREATE EXTENSION monk');
like($err, qr/WARNING:  monk is not loaded by shared_preload_libraries/, 'a later line naming only another library is caught too');
($rc, $out, $err) = $node->psql('unloaded', q{CREATE TRIGGER calls_monk2 AFTER UPDATE ON calls FOR EACH ROW
	EXECUTE FUNCTION monk_capture('call', 'external_customer_id=customer')});
like($err, qr/trigger "calls_monk2" will fail at the first row it captures/, 'and at a capture trigger too');
# preloaded again: the trigger is created without a word (the database is listed)
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'monk'\nmonk.databases = 'postgres,unloaded'");
$node->restart;
($rc, $out, $err) = $node->psql('unloaded', q{CREATE TRIGGER calls_monk3 AFTER UPDATE ON calls FOR EACH ROW
	EXECUTE FUNCTION monk_capture('call', 'external_customer_id=customer')});
is("$rc $err", '0 ', 'preloaded, a capture trigger is created without a warning');

$node->stop;
done_testing();
